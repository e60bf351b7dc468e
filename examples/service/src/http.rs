//! A small HTTP/1.1 client over a Tokio `TcpStream`, keep-alive, for the load generator and
//! the tests (no client library in the dependency tree).
//!
//! One [`Client`] is one connection, used for one request at a time and kept open between
//! requests. It sends `Host` and, with a body, `Content-Length`; it reads a response framed
//! by `Content-Length`, by `Transfer-Encoding: chunked`, or (neither) by the end of the
//! connection, and knows that 1xx, 204 and 304 answers have no body. It reconnects when the
//! server said `Connection: close` or closed an idle connection: a request whose write fails,
//! or whose answer gets no byte before the connection ends, on a connection that had already
//! served a request, is sent once more on a new one (the requests these tools send are all
//! idempotent). Plain `http://` only.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest status line plus headers accepted (bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted (bytes).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            invalid(format!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            ))
        })
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One keep-alive connection to an `http://host:port` server.
#[derive(Debug)]
pub struct Client {
    host: String,
    conn: Option<BufReader<TcpStream>>,
    /// Whether `conn` has already carried a request (a failure on it may be an idle close).
    reused: bool,
    timeout: Duration,
}

impl Client {
    /// A client of `base_url` (`http://host:port`, an optional trailing `/`); connects on the
    /// first request. Every request is bounded by 30 s (see [`Client::with_timeout`]).
    pub fn new(base_url: &str) -> io::Result<Client> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| invalid(format!("{base_url:?}: only http:// URLs are supported")))?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(invalid(format!(
                "{base_url:?}: give http://host:port, without a path"
            )));
        }
        Ok(Client {
            host: host.to_owned(),
            conn: None,
            reused: false,
            timeout: Duration::from_secs(30),
        })
    }

    /// The same client with each request (connect, write, read) bounded by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put_json(&mut self, path: &str, json: &str) -> io::Result<Response> {
        self.request("PUT", path, Some(json.as_bytes())).await
    }

    /// Sends one request and reads its response (see the module docs for reconnects).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        if let Some(body) = body {
            head.push_str("content-type: application/json\r\n");
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let head_only = method.eq_ignore_ascii_case("HEAD");
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(&bytes, head_only)).await {
            Ok(result) => result,
            Err(_) => {
                self.conn = None;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{method} {path}: no answer within {timeout:?}"),
                ))
            }
        }
    }

    async fn exchange(&mut self, request: &[u8], head_only: bool) -> io::Result<Response> {
        let mut retried = false;
        loop {
            if self.conn.is_none() {
                let stream = TcpStream::connect(&self.host).await?;
                stream.set_nodelay(true)?;
                self.conn = Some(BufReader::new(stream));
                self.reused = false;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let answer = match conn.get_mut().write_all(request).await {
                Ok(()) => read_response(conn, head_only).await,
                // The server closed the connection: no answer can have been started.
                Err(e) if is_closed(&e) => Err(no_answer()),
                Err(e) => Err(e),
            };
            match answer {
                Ok((response, keep_alive)) => {
                    if keep_alive {
                        self.reused = true;
                    } else {
                        self.conn = None;
                    }
                    return Ok(response);
                }
                Err(e) => {
                    let idle_close = self.reused && !retried && is_no_answer(&e);
                    self.conn = None;
                    if !idle_close {
                        return Err(e);
                    }
                    retried = true;
                }
            }
        }
    }
}

const NO_ANSWER: &str = "connection closed before an answer";

fn no_answer() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, NO_ANSWER)
}

/// Whether `e` says the connection was closed or reset by the peer.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Whether `e` is what a server's close of an idle keep-alive connection looks like: the
/// connection ended before the first byte of an answer (or refused the request's bytes).
fn is_no_answer(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
        && e.get_ref()
            .is_some_and(|inner| inner.to_string() == NO_ANSWER)
}

/// Reads one line (up to `\n`) into `line`, adding its length to `*budget_used`; an error
/// past [`MAX_HEAD`].
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    budget_used: &mut usize,
) -> io::Result<usize> {
    line.clear();
    let n = (&mut *r)
        .take((MAX_HEAD - *budget_used) as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    *budget_used += n;
    if *budget_used > MAX_HEAD {
        return Err(invalid("response head larger than 64 KiB"));
    }
    Ok(n)
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads one response from `r`; returns it and whether the connection can carry another
/// request. `head_only`: the request was `HEAD` (no body follows whatever the headers say).
pub async fn read_response<R: AsyncBufRead + Unpin>(
    r: &mut R,
    head_only: bool,
) -> io::Result<(Response, bool)> {
    let mut used = 0;
    let mut line = Vec::new();
    match read_line(r, &mut line, &mut used).await {
        Ok(0) => return Err(no_answer()),
        Err(e) if line.is_empty() && is_closed(&e) => return Err(no_answer()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let status_line = String::from_utf8_lossy(trim_crlf(&line)).into_owned();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("not an HTTP/1.x status line: {status_line:?}")))?;
    let mut keep_alive = version == "HTTP/1.1";
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    loop {
        if read_line(r, &mut line, &mut used).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the response head",
            ));
        }
        let l = trim_crlf(&line);
        if l.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(l);
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header line {text:?}")))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_owned();
        match name.as_str() {
            "content-length" => {
                let n = value
                    .parse()
                    .map_err(|_| invalid(format!("bad content-length {value:?}")))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(invalid("conflicting content-length headers"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            _ => {}
        }
        headers.push((name, value));
    }
    let no_body = head_only || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked(r).await?
    } else if let Some(n) = content_length {
        if n > MAX_BODY {
            return Err(invalid(format!("body of {n} bytes is larger than 64 MiB")));
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body).await?;
        body
    } else {
        // Framed by the end of the connection.
        keep_alive = false;
        let mut body = Vec::new();
        (&mut *r)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .await?;
        if body.len() > MAX_BODY {
            return Err(invalid("body larger than 64 MiB"));
        }
        body
    };
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep_alive,
    ))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        let mut used = 0;
        if read_line(r, &mut line, &mut used).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a chunked body",
            ));
        }
        let text = String::from_utf8_lossy(trim_crlf(&line)).into_owned();
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if read_line(r, &mut line, &mut used).await? == 0 || trim_crlf(&line).is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("chunked body larger than 64 MiB"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> io::Result<(Response, bool)> {
        let mut r = bytes;
        read_response(&mut r, false).await
    }

    #[tokio::test]
    async fn content_length_and_keep_alive() {
        let (r, keep) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloNEXT")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
        assert!(keep);
    }

    #[tokio::test]
    async fn chunked_with_extension_and_trailer() {
        let (r, keep) = parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: v\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.text(), "Wikipedia");
        assert!(keep);
    }

    #[tokio::test]
    async fn close_and_eof_framing() {
        let (r, keep) = parse(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\nnope")
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str(), keep), (404, "nope", false));
        let (r, keep) = parse(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        assert_eq!((r.status, r.body.len(), keep), (204, 0, true));
        let (_, keep) = parse(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert!(!keep, "HTTP/1.0 closes unless told otherwise");
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        let e = parse(b"").await.unwrap_err();
        assert!(is_no_answer(&e), "{e}");
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
                .await
                .is_err()
        );
        let e = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
            .await
            .unwrap_err();
        assert!(!is_no_answer(&e), "a cut body is not an idle close");
        assert!(Client::new("https://x:1").is_err());
        assert!(Client::new("http://x:1/api").is_err());
        assert!(Client::new("http://127.0.0.1:1/").is_ok());
    }
}
