//! The load loop's HTTP/1.1 client: one keep-alive connection, one `POST` at a time, and
//! nothing else. A general client (ureq, used for the preflight and set-up) spent ~70 µs of
//! CPU per request building header maps and parsing URLs, which on a shared machine is
//! CPU taken from the server under test; this one writes a prepared request with one
//! syscall and reads the answer by its `Content-Length`. `http://`, or `https://` with a
//! rustls client configuration ([`super::tls`]); optionally from a chosen source address
//! (the junk flood comes from another loopback address than the honest load).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// Longest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// `POST` `body` (JSON) to one URL, again and again, on one connection.
pub struct Poster {
    address: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    source: Option<IpAddr>,
    /// The request up to and including `Authorization: Bearer `.
    head: Vec<u8>,
    /// `\r\n`, the remaining headers, the blank line and the body.
    tail: Vec<u8>,
    timeout: Duration,
    connection: Option<Connection>,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

/// One answer: status and body.
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, `Content-Length` bytes.
    pub body: Vec<u8>,
}

impl Poster {
    /// A client for `url` (`http://HOST:PORT/PATH`, or `https://…` with `tls`) sending
    /// `body` with a bearer token.
    pub fn new(
        url: &str,
        body: &str,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Poster> {
        let (rest, tls) = match (url.strip_prefix("https://"), tls) {
            (Some(rest), Some(config)) => (rest, Some(config)),
            (Some(_), None) => {
                return Err(invalid(format!("{url} needs a TLS client configuration")));
            }
            (None, _) => (
                url.strip_prefix("http://").ok_or_else(|| {
                    invalid(format!(
                        "only http:// and https:// URLs are supported: {url}"
                    ))
                })?,
                None,
            ),
        };
        let (address, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let head = format!("POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer ");
        let tail = format!(
            "\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let tls = match tls {
            Some(config) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| invalid(format!("{host:?} is not a TLS server name: {e}")))?;
                Some((config, name))
            }
            None => None,
        };
        Ok(Poster {
            address: address.to_owned(),
            tls,
            source: None,
            head: head.into_bytes(),
            tail: tail.into_bytes(),
            timeout,
            connection: None,
            request: Vec::with_capacity(4096),
            buffer: Vec::with_capacity(8192),
        })
    }

    /// Connect from `source` (e.g. `127.0.0.2`) rather than the address the system picks.
    pub fn from_source(mut self, source: IpAddr) -> Poster {
        self.source = Some(source);
        self
    }

    /// Send the request with `token` and read the whole answer. After an error the
    /// connection is dropped and the next call opens a new one.
    pub fn post(&mut self, token: &str) -> io::Result<Answer> {
        let result = self.exchange(token);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    fn exchange(&mut self, token: &str) -> io::Result<Answer> {
        if self.connection.is_none() {
            self.connection = Some(self.connect()?);
        }
        let stream = self.connection.as_mut().expect("connected above");
        self.request.clear();
        self.request.extend_from_slice(&self.head);
        self.request.extend_from_slice(token.as_bytes());
        self.request.extend_from_slice(&self.tail);
        stream.write_all(&self.request)?;

        self.buffer.clear();
        let head_end = loop {
            if let Some(end) = find_head_end(&self.buffer) {
                break end;
            }
            if self.buffer.len() > MAX_HEAD_BYTES {
                return Err(invalid("response head too long".into()));
            }
            read_more(stream, &mut self.buffer)?;
        };
        let (status, length, close) = parse_head(&self.buffer[..head_end])?;
        let total = head_end + length;
        while self.buffer.len() < total {
            read_more(stream, &mut self.buffer)?;
        }
        let body = self.buffer[head_end..total].to_vec();
        if close {
            self.connection = None;
        }
        Ok(Answer { status, body })
    }

    fn connect(&self) -> io::Result<Connection> {
        let stream = match self.source {
            None => TcpStream::connect(&self.address)?,
            Some(source) => {
                let target = self
                    .address
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| invalid(format!("{} resolves to nothing", self.address)))?;
                connect_from(source, target)?
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        Ok(match &self.tls {
            None => Connection::Plain(stream),
            Some((config, name)) => {
                let client = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(io::Error::other)?;
                Connection::Tls(Box::new(rustls::StreamOwned::new(client, stream)))
            }
        })
    }
}

/// A TCP connection to `target` from the local address `source`.
fn connect_from(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(target);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&target.into())?;
    Ok(socket.into())
}

/// One keep-alive connection, plain or TLS (the handshake runs on the first write).
enum Connection {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.read(buf),
            Connection::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(stream) => stream.write(buf),
            Connection::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Plain(stream) => stream.flush(),
            Connection::Tls(stream) => stream.flush(),
        }
    }
}

fn read_more(stream: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<()> {
    let start = buffer.len();
    buffer.resize(start + 8192, 0);
    let read = stream.read(&mut buffer[start..]);
    let n = *read.as_ref().unwrap_or(&0);
    buffer.truncate(start + n);
    match read {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-response",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Index just past the blank line ending the head, if it has arrived.
fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Status, `Content-Length` and whether the server closes the connection.
fn parse_head(head: &[u8]) -> io::Result<(u16, usize, bool)> {
    let head =
        std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line: {status_line:?}")))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length: {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid(format!("unsupported Transfer-Encoding: {value}")));
        }
    }
    let length = length.ok_or_else(|| invalid("response without Content-Length".into()))?;
    Ok((status, length, close))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use super::{Poster, parse_head};

    #[test]
    fn parses_status_length_and_close() {
        let head = b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_head(head).expect("head"), (201, 12, true));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err(),
            "chunked"
        );
        assert!(parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").is_err());
    }

    /// Two requests on one connection against a real socket: the request carries the
    /// token and body, the answers come back whole even when split across reads.
    #[test]
    fn posts_twice_on_one_keep_alive_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/v1/certificates",
            listener.local_addr().expect("addr")
        );
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            let mut seen = Vec::new();
            for answer in ["first", "second!"] {
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("line");
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = [0u8; 10];
                reader.read_exact(&mut body).expect("body");
                seen.push((head, String::from_utf8_lossy(&body).into_owned()));
                let response = format!(
                    "HTTP/1.1 201 Created\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                let (a, b) = response.as_bytes().split_at(20);
                writer.write_all(a).expect("write");
                writer.flush().expect("flush");
                writer.write_all(b).expect("write");
            }
            seen
        });
        let mut poster =
            Poster::new(&url, "{\"a\":true}", Duration::from_secs(5), None).expect("poster");
        let first = poster.post("tok-1").expect("first");
        assert_eq!((first.status, first.body.as_slice()), (201, &b"first"[..]));
        let second = poster.post("tok-2").expect("second");
        assert_eq!(
            (second.status, second.body.as_slice()),
            (201, &b"second!"[..])
        );
        let seen = server.join().expect("server");
        assert!(seen[0].0.starts_with("POST /v1/certificates HTTP/1.1\r\n"));
        assert!(seen[0].0.contains("Authorization: Bearer tok-1\r\n"));
        assert!(seen[1].0.contains("Authorization: Bearer tok-2\r\n"));
        assert!(seen[0].0.contains("Content-Length: 10\r\n"));
        assert_eq!(seen[0].1, "{\"a\":true}");
    }
}
