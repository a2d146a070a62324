//! A host enrolled for host certificates, for tests that need the whole picture: an IdP,
//! a CA with an agent policy (ALICE on `*.prod.example.com`) and a host policy, and a host
//! whose sshd serves a certificate from `writ-principals host-cert`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use super::ca::TestCa;
use super::idp::{Key, TestIdp};
use super::sshd::{Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd};

pub const ALICE: &str = "writ_alice";
pub const HOST_NAME: &str = "web-01.prod.example.com";

/// Agents may log in as ALICE on `*.prod.example.com`; hosts whose token's subject starts
/// with `host-` may have certificates for names under `prod.example.com`.
pub fn policies() -> String {
    format!(
        "name = \"agents\"\nsubject = \"agent-*\"\nlogins = [\"{ALICE}\"]\nhosts = [\"*.prod.example.com\"]\n\n\
         [[policy]]\nissuer = \"test\"\nname = \"hosts\"\nsubject = \"host-*\"\nrole = \"host\"\n\
         hosts = [\"*.prod.example.com\"]\n"
    )
}

/// A CA with the policies above, vouching for hosts under `prod.example.com` (and
/// `ca_extra` in `[ca]`).
pub fn ca_with(idp: &TestIdp, ca_extra: &str) -> TestCa {
    ca_with_policies(idp, ca_extra, &policies())
}

/// A CA vouching for hosts under `prod.example.com` with `policies` (see [`policies`]).
pub fn ca_with_policies(idp: &TestIdp, ca_extra: &str, policies: &str) -> TestCa {
    let ca_extra = format!("host_patterns = [\"*.prod.example.com\"]\n{ca_extra}");
    TestCa::with_policy(idp, &ca_extra, policies)
}

/// A host whose sshd host key is generated now (so a certificate can be asked for before
/// sshd starts), with its host token and `[host_certificates]` for `names`.
pub struct EnrolledHost {
    /// The host directory (sshd's host key, host.toml, the principals binary).
    pub host: TestHost,
    pid_file: PathBuf,
}

impl EnrolledHost {
    pub fn new(ca: &TestCa, idp: &TestIdp, names: &[&str]) -> EnrolledHost {
        let host = TestHost::new(super::writ_principals());
        let key = host.dir().join("ssh_host_ed25519_key");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-host", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen");
        assert!(status.success());
        let token_file = host.dir().join("host.token");
        fs::write(&token_file, idp.token(Key::Rsa, "host-web-01")).expect("token");
        let pid_file = host.dir().join("sshd.pid");
        host.write_host_config(&format!(
            "ca_url = \"{url}\"\nhost_name = \"{HOST_NAME}\"\nstate_dir = \"{state}\"\n\
             token_file = \"{token}\"\n\n[host_certificates]\nnames = {names:?}\n\
             keys = [\"{key}.pub\"]\nsshd_pid_file = \"{pid}\"\n",
            url = ca.url,
            state = host.state_dir().display(),
            token = token_file.display(),
            key = key.display(),
            pid = pid_file.display(),
        ));
        EnrolledHost { host, pid_file }
    }

    pub fn certificate_path(&self) -> PathBuf {
        self.host.dir().join("ssh_host_ed25519_key-cert.pub")
    }

    /// A fresh token for the next request (tokens are single-use).
    pub fn refresh_token(&self, idp: &TestIdp) {
        fs::write(
            self.host.dir().join("host.token"),
            idp.token(Key::Rsa, "host-web-01"),
        )
        .expect("token");
    }

    pub fn principals(&self, args: &[&str]) -> Output {
        Command::new(self.host.principals_bin())
            .args(args)
            .arg("--config")
            .arg(self.host.host_config_path())
            .output()
            .expect("run writ-principals")
    }

    pub fn host_cert(&self) -> Output {
        self.principals(&["host-cert"])
    }

    pub fn sync(&self) {
        let out = self.principals(&["sync"]);
        assert!(out.status.success(), "sync: {}", stderr(&out));
    }

    /// sshd serving the certificate (if `with_certificate`), trusting the CA for users.
    pub fn start_sshd(&self, with_certificate: bool) -> Sshd {
        let extra = if with_certificate {
            format!("HostCertificate {}\n", self.certificate_path().display())
        } else {
            String::new()
        };
        let sshd = Sshd::start(
            &self.host,
            SshdOptions {
                extra_config: extra,
                ..SshdOptions::default()
            },
        );
        fs::write(&self.pid_file, sshd.pid().to_string()).expect("pid file");
        sshd
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An IdP, a CA (`ca_extra` in `[ca]`) and a host enrolled for HOST_NAME that has synced;
/// with `certify`, its first certificate is written too.
pub fn world(ca_extra: &str, certify: bool) -> (TestIdp, TestCa, EnrolledHost) {
    world_with_policies(ca_extra, &policies(), certify)
}

/// [`world`] with other `policies`.
pub fn world_with_policies(
    ca_extra: &str,
    policies: &str,
    certify: bool,
) -> (TestIdp, TestCa, EnrolledHost) {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with_policies(&idp, ca_extra, policies);
    let enrolled = EnrolledHost::new(&ca, &idp, &[HOST_NAME]);
    enrolled.sync();
    if certify {
        let out = enrolled.host_cert();
        assert!(out.status.success(), "host-cert: {}", stderr(&out));
        enrolled.refresh_token(&idp);
    }
    (idp, ca, enrolled)
}
