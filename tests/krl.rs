//! The KRL encoder against the real OpenSSH `ssh-keygen`: every KRL writ encodes must
//! parse (sshd denies every key when it can't read its `RevokedKeys` file), and
//! `ssh-keygen -Q` — which uses the same reader as sshd — must report revoked exactly
//! the certificates and keys writ revoked, agreeing with a KRL `ssh-keygen -k` builds
//! from the same revocations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ssh_key::PublicKey;
use ssh_key::public::KeyData;
use writ::revocation::krl::KrlBuilder;

/// Length of the KRL header with an empty comment: magic, format version, KRL version,
/// date, flags, reserved string, comment string.
const EMPTY_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4 + 4;

/// 2023-11-14T22:13:20Z.
const DATE: u64 = 1_700_000_000;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Generate a key pair `name` of type `kind` in `dir`; returns the private key path.
fn keygen(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-C", name, "-t", kind]);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(cmd.arg("-f").arg(&path));
    path
}

fn pub_path(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

fn key_data(key: &Path) -> KeyData {
    PublicKey::read_openssh_file(&pub_path(key))
        .expect("read public key")
        .key_data()
        .clone()
}

/// Certify (a copy of) `user`'s public key as `name` with `ca` and `serial`; returns the
/// certificate path.
fn certify(dir: &Path, ca: &Path, user: &Path, name: &str, serial: u64) -> PathBuf {
    let copy = dir.join(format!("{name}.pub"));
    std::fs::copy(pub_path(user), &copy).expect("copy public key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", name, "-n", "p", "-z", &serial.to_string()])
        .arg(&copy));
    dir.join(format!("{name}-cert.pub"))
}

/// `ssh-keygen -Q -f krl files…`: whether each file's key is revoked. Checks the output
/// has one `FILE (comment): REVOKED|ok` line per file and that the exit status is 1
/// exactly when something is revoked (0 otherwise); any other status means OpenSSH could
/// not read the KRL, and fails the test.
fn query(krl: &Path, files: &[PathBuf]) -> Vec<bool> {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .args(files)
        .output()
        .expect("run ssh-keygen -Q");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        files.len(),
        "stdout {stdout:?} stderr {stderr}"
    );
    let revoked: Vec<bool> = files
        .iter()
        .zip(&lines)
        .map(|(file, line)| {
            let rest = line
                .strip_prefix(&*file.display().to_string())
                .unwrap_or_else(|| panic!("line {line:?} is not about {file:?}"));
            if rest.ends_with("): REVOKED") {
                true
            } else if rest.ends_with("): ok") {
                false
            } else {
                panic!("unexpected -Q line {line:?}")
            }
        })
        .collect();
    let expected_status = i32::from(revoked.contains(&true));
    assert_eq!(
        out.status.code(),
        Some(expected_status),
        "ssh-keygen -Q status; stderr {stderr}"
    );
    revoked
}

/// `ssh-keygen -Q -l -f krl` (in UTC): the KRL as OpenSSH reads it back.
fn listing(krl: &Path) -> String {
    let out = run(Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .args(["-Q", "-l", "-f"])
        .arg(krl));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The per-CA serial blocks of a `-Q -l` listing: `# CA key …` line → its `serial:`
/// lines, in order. The header and other lines are dropped.
fn listed_serials(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut blocks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in listing.lines() {
        if line.starts_with("# CA key ") {
            current = Some(line.to_owned());
            blocks.entry(line.to_owned()).or_default();
        } else if line.starts_with("serial: ") {
            let ca = current.clone().expect("serial line before any CA");
            blocks.entry(ca).or_default().push(line.to_owned());
        }
    }
    blocks
}

/// The `# CA key` line `ssh-keygen -Q -l` prints for `ca`.
fn ca_line(ca: &KeyData) -> String {
    let key = PublicKey::from(ca.clone());
    format!(
        "# CA key {} {}",
        key.algorithm().as_str(),
        key.fingerprint(Default::default())
    )
}

/// The `serial:` lines `ssh-keygen -Q -l` prints for a set of revoked serials: maximal
/// consecutive runs, ascending.
fn serial_lines(serials: &BTreeSet<u64>) -> Vec<String> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &s in serials {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(s) => *hi = s,
            _ => runs.push((s, s)),
        }
    }
    runs.into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                format!("serial: {lo}")
            } else {
                format!("serial: {lo}-{hi}")
            }
        })
        .collect()
}

/// xorshift64*: a small deterministic generator, so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).expect("index");
            items.swap(i, j);
        }
    }
}

/// One CA with certificates for a fixed pool of serials (all for the same user key).
struct Ca {
    key: PathBuf,
    data: KeyData,
    certs: Vec<(u64, PathBuf)>,
}

impl Ca {
    fn new(dir: &Path, name: &str, kind: &str, user: &Path, serials: &[u64]) -> Ca {
        let key = keygen(dir, name, kind);
        let certs = serials
            .iter()
            .map(|&s| (s, certify(dir, &key, user, &format!("{name}-{s}"), s)))
            .collect();
        Ca {
            data: key_data(&key),
            key,
            certs,
        }
    }
}

/// Random revocations for one CA: the revoked set, the `ssh-keygen -k` spec lines for
/// it, and the (shuffled, duplicated, zero-sprinkled) serials to feed the builder.
struct Revocations {
    set: BTreeSet<u64>,
    spec: Vec<String>,
    input: Vec<u64>,
}

fn random_revocations(rng: &mut Rng, pool: &[u64], always: &[u64]) -> Revocations {
    let mut singles: Vec<u64> = pool
        .iter()
        .copied()
        .filter(|&s| s != 0 && rng.chance(1, 3))
        .collect();
    singles.extend(always);
    // A few serials no certificate has, anywhere in the u64 space.
    for _ in 0..rng.below(4) {
        singles.push(rng.next().max(1));
    }
    let mut set: BTreeSet<u64> = singles.iter().copied().collect();
    let mut spec: Vec<String> = singles.iter().map(|s| format!("serial: {s}")).collect();
    // Consecutive blocks (written to the spec as ranges), near the pool's clusters.
    for _ in 0..rng.below(3) {
        let len = 1 + rng.below(8);
        let lo = match rng.below(3) {
            0 => 1 + rng.below(24),
            1 => 98 + rng.below(6),
            _ => u64::MAX - rng.below(10),
        };
        let hi = lo.saturating_add(len - 1);
        set.extend(lo..=hi);
        // ssh-keygen's spec parser rejects a range whose ends are equal.
        spec.push(if lo == hi {
            format!("serial: {lo}")
        } else {
            format!("serial: {lo}-{hi}")
        });
    }
    let mut input: Vec<u64> = set.iter().copied().collect();
    // Duplicates and zeros must not change the result.
    for _ in 0..rng.below(3) {
        let i = usize::try_from(rng.below(input.len() as u64 + 1)).expect("index");
        if let Some(&s) = input.get(i) {
            input.push(s);
        }
        input.push(0);
    }
    rng.shuffle(&mut input);
    Revocations { set, spec, input }
}

/// Build `ssh-keygen`'s own KRL for the same revocations (`-k`, then `-u` per extra CA).
fn reference_krl(dir: &Path, path: &Path, sections: &[(&Ca, &Revocations)]) {
    let sections: Vec<_> = sections.iter().filter(|(_, r)| !r.set.is_empty()).collect();
    if sections.is_empty() {
        // Nothing revoked anywhere: an empty spec gives an empty KRL.
        let spec = dir.join("spec-empty");
        std::fs::write(&spec, "").expect("write spec");
        run(Command::new("ssh-keygen")
            .args(["-q", "-k", "-f"])
            .arg(path)
            .arg(&spec));
        return;
    }
    for (i, (ca, rev)) in sections.iter().enumerate() {
        let spec = dir.join(format!("spec-{i}"));
        std::fs::write(&spec, rev.spec.join("\n") + "\n").expect("write spec");
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-k"]);
        if i > 0 {
            cmd.arg("-u");
        }
        run(cmd
            .arg("-f")
            .arg(path)
            .arg("-s")
            .arg(pub_path(&ca.key))
            .arg(&spec));
    }
}

#[test]
fn random_serial_revocations_match_ssh_keygen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let user = keygen(dir, "user", "ed25519");

    let mut pool_a: Vec<u64> = vec![0];
    pool_a.extend(1..=24);
    pool_a.extend([100, 101, 102, 1000, (1 << 32) - 1, 1 << 32, 1 << 63]);
    pool_a.extend(u64::MAX - 4..=u64::MAX);
    // The other CA's certificates reuse serials CA A revokes.
    let pool_b = [1, 2, 3, 7, 100, u64::MAX];
    let a = Ca::new(dir, "ca-a", "ed25519", &user, &pool_a);
    let b = Ca::new(dir, "ca-b", "ecdsa", &user, &pool_b);

    let certs: Vec<PathBuf> = a
        .certs
        .iter()
        .chain(&b.certs)
        .map(|(_, path)| path.clone())
        .collect();
    let ours = dir.join("ours.krl");
    let reference = dir.join("ref.krl");

    for seed in 0..24 {
        let mut rng = Rng::new(seed);
        // Half the time CA B has no section at all, and CA A revokes every serial B's
        // certificates carry: those must stay valid.
        let b_revokes = rng.chance(1, 2);
        let rev_a = random_revocations(&mut rng, &pool_a, if b_revokes { &[] } else { &pool_b });
        let rev_b = if b_revokes {
            random_revocations(&mut rng, &pool_b, &[])
        } else {
            Revocations {
                set: BTreeSet::new(),
                spec: Vec::new(),
                input: Vec::new(),
            }
        };

        let mut builder = KrlBuilder::new(seed, DATE);
        builder.comment(&format!("seed {seed}"));
        // Feed the serials in several calls, interleaving the CAs.
        let half_a = rev_a.input.len() / 2;
        let half_b = rev_b.input.len() / 2;
        builder
            .revoke_serials(&a.data, rev_a.input[..half_a].iter().copied())
            .revoke_serials(&b.data, rev_b.input[..half_b].iter().copied())
            .revoke_serials(&a.data, rev_a.input[half_a..].iter().copied())
            .revoke_serials(&b.data, rev_b.input[half_b..].iter().copied());
        std::fs::write(&ours, builder.encode()).expect("write KRL");
        reference_krl(dir, &reference, &[(&a, &rev_a), (&b, &rev_b)]);

        let expected: Vec<bool> = a
            .certs
            .iter()
            .map(|(s, _)| rev_a.set.contains(s))
            .chain(b.certs.iter().map(|(s, _)| rev_b.set.contains(s)))
            .collect();
        assert_eq!(query(&ours, &certs), expected, "seed {seed}: our KRL");
        assert_eq!(
            query(&reference, &certs),
            expected,
            "seed {seed}: ssh-keygen's KRL"
        );

        // Beyond the sampled certificates: OpenSSH reads back exactly the revoked sets.
        let mut expected_listing = BTreeMap::new();
        for (ca, rev) in [(&a, &rev_a), (&b, &rev_b)] {
            if !rev.set.is_empty() {
                expected_listing.insert(ca_line(&ca.data), serial_lines(&rev.set));
            }
        }
        let our_listing = listing(&ours);
        assert_eq!(
            listed_serials(&our_listing),
            expected_listing,
            "seed {seed}"
        );
        assert_eq!(
            listed_serials(&listing(&reference)),
            expected_listing,
            "seed {seed}: ssh-keygen's KRL"
        );
        assert!(
            our_listing.starts_with(&format!(
                "# KRL version {seed}\n# Generated at 20231114T221320\n# Comment: seed {seed}\n"
            )),
            "{our_listing}"
        );
    }
}

#[test]
fn revoking_a_ca_key_revokes_every_certificate_it_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let user = keygen(dir, "user", "ed25519");
    let cas: Vec<Ca> = [("ed25519", "ca-ed"), ("ecdsa", "ca-ec"), ("rsa", "ca-rsa")]
        .iter()
        .map(|(kind, name)| Ca::new(dir, name, kind, &user, &[0, 1, 77, u64::MAX]))
        .collect();

    let mut files: Vec<PathBuf> = vec![pub_path(&user)];
    for ca in &cas {
        files.push(pub_path(&ca.key));
        files.extend(ca.certs.iter().map(|(_, path)| path.clone()));
    }
    let ours = dir.join("ours.krl");
    let reference = dir.join("ref.krl");

    for revoked in &cas {
        std::fs::write(
            &ours,
            KrlBuilder::new(1, DATE).revoke_key(&revoked.data).encode(),
        )
        .expect("write KRL");

        let mut expected = vec![false]; // the plain user key
        for ca in &cas {
            let hit = std::ptr::eq(ca, revoked);
            expected.push(hit); // the CA key itself
            expected.extend(ca.certs.iter().map(|_| hit));
        }
        assert_eq!(query(&ours, &files), expected, "{:?}", revoked.key);

        // `ssh-keygen -k` of the CA's public key writes the same explicit-key section,
        // byte for byte (so the key blob encoding is OpenSSH's exactly).
        run(Command::new("ssh-keygen")
            .args(["-q", "-k", "-f"])
            .arg(&reference)
            .arg(pub_path(&revoked.key)));
        let ours_bytes = std::fs::read(&ours).expect("read");
        let ref_bytes = std::fs::read(&reference).expect("read");
        assert_eq!(
            ours_bytes[EMPTY_HEADER_LEN..],
            ref_bytes[EMPTY_HEADER_LEN..],
            "{:?}",
            revoked.key
        );
    }
}

#[test]
fn revoking_a_user_key_revokes_the_key_and_its_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ca = keygen(dir, "ca", "ed25519");
    let users: Vec<(PathBuf, PathBuf)> = ["ed25519", "ecdsa", "rsa"]
        .iter()
        .map(|kind| {
            let user = keygen(dir, &format!("user-{kind}"), kind);
            let cert = certify(dir, &ca, &user, &format!("cert-{kind}"), 5);
            (user, cert)
        })
        .collect();
    let files: Vec<PathBuf> = users
        .iter()
        .flat_map(|(user, cert)| [pub_path(user), cert.clone()])
        .chain([pub_path(&ca)])
        .collect();
    let krl = dir.join("krl");

    for (revoked, _) in &users {
        std::fs::write(
            &krl,
            KrlBuilder::new(1, DATE)
                .revoke_key(&key_data(revoked))
                .encode(),
        )
        .expect("write KRL");
        let expected: Vec<bool> = users
            .iter()
            .flat_map(|(user, _)| [user == revoked, user == revoked])
            .chain([false])
            .collect();
        assert_eq!(query(&krl, &files), expected, "{revoked:?}");
    }

    // All at once, together with a serial revocation for a serial nobody has.
    let mut builder = KrlBuilder::new(2, DATE);
    for (user, _) in &users {
        builder.revoke_key(&key_data(user));
    }
    builder.revoke_serials(&key_data(&ca), [6]);
    std::fs::write(&krl, builder.encode()).expect("write KRL");
    let expected: Vec<bool> = users
        .iter()
        .flat_map(|_| [true, true])
        .chain([false])
        .collect();
    assert_eq!(query(&krl, &files), expected);
}

#[test]
fn empty_krl_revokes_nothing_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ca = keygen(dir, "ca", "ed25519");
    let user = keygen(dir, "user", "ed25519");
    let cert = certify(dir, &ca, &user, "cert", 1);
    let files = [pub_path(&ca), pub_path(&user), cert];

    let krl = dir.join("empty.krl");
    std::fs::write(&krl, KrlBuilder::new(3, DATE).encode()).expect("write KRL");
    assert_eq!(query(&krl, &files), [false, false, false]);
    assert_eq!(
        listing(&krl),
        "# KRL version 3\n# Generated at 20231114T221320\n\n"
    );

    // Byte-identical to ssh-keygen's empty KRL but for the generation time.
    let reference = dir.join("ref.krl");
    let spec = dir.join("spec");
    std::fs::write(&spec, "").expect("write spec");
    run(Command::new("ssh-keygen")
        .args(["-q", "-k", "-z", "3", "-f"])
        .arg(&reference)
        .arg(&spec));
    let ours = std::fs::read(&krl).expect("read");
    let theirs = std::fs::read(&reference).expect("read");
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours[..20], theirs[..20]);
    assert_eq!(ours[28..], theirs[28..]);

    // Revocations that all drop out (serial 0 only) and a comment with a NUL in it
    // still give a KRL OpenSSH reads.
    let mut builder = KrlBuilder::new(4, DATE);
    builder
        .comment("writ\0 test")
        .revoke_serials(&key_data(&ca), [0, 0]);
    std::fs::write(&krl, builder.encode()).expect("write KRL");
    assert_eq!(query(&krl, &files), [false, false, false]);
    assert_eq!(
        listing(&krl),
        "# KRL version 4\n# Generated at 20231114T221320\n# Comment: writ test\n\n"
    );
}
