//! A small HTTP/1.1 client over tokio's `TcpStream`, built for the load generator: a request
//! is bytes encoded once up front, a response is framed by `Content-Length` or chunked
//! encoding and, on the hot path, only its status is kept. No pipelining: one request in
//! flight per connection.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::url::Target;

/// Limit on a response head; a longer one is a broken server, not a benchmark.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Limit on how much of one response the client buffers (head plus body).
const RESPONSE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Initial read buffer: a `/health` or `/v1/me` response fits many times over.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Encodes a request once so the hot loop only copies bytes into the socket.
pub fn encode_request(
    method: &str,
    target: &Target,
    headers: &[(String, String)],
    json_body: Option<&str>,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        target.path, target.authority
    );
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if let Some(body) = json_body {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        out.push_str(body);
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// Parses `Name: value` as given to `--header`.
pub fn parse_header(raw: &str) -> Result<(String, String)> {
    let Some((name, value)) = raw.split_once(':') else {
        bail!("header {raw:?} is not of the form 'Name: value'");
    };
    let name = name.trim();
    if name.is_empty()
        || name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!("bad header name in {raw:?}");
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// One response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The server said it will close the connection (or the response was delimited by EOF).
    pub close: bool,
    /// The decoded body; empty unless it was asked for.
    pub body: Vec<u8>,
}

/// One keep-alive connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting {addr}"))?;
        // Requests are small and sent whole: Nagle would only add delay.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
        })
    }

    /// Sends `request` and reads its response; `keep_body` says whether to copy the body out.
    pub async fn exchange(&mut self, request: &[u8], keep_body: bool) -> Result<Response> {
        self.stream
            .write_all(request)
            .await
            .context("writing request")?;
        self.read_response(keep_body).await
    }

    async fn read_response(&mut self, keep_body: bool) -> Result<Response> {
        let mut eof = false;
        loop {
            match parse_response(&self.buf[self.start..self.end], keep_body, eof)? {
                Parsed::Complete { consumed, response } => {
                    self.start += consumed;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    // Interim 1xx responses are followed by the real one.
                    if (100..200).contains(&response.status) && response.status != 101 {
                        continue;
                    }
                    return Ok(response);
                }
                Parsed::Partial => {
                    if eof {
                        bail!("connection closed mid-response");
                    }
                }
            }
            self.make_room()?;
            let n = self
                .stream
                .read(&mut self.buf[self.end..])
                .await
                .context("reading")?;
            if n == 0 {
                if self.start == self.end {
                    bail!("connection closed by server");
                }
                eof = true;
            }
            self.end += n;
        }
    }

    /// Ensures there is free space after `end`, compacting first and growing to the limit.
    fn make_room(&mut self) -> Result<()> {
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return Ok(());
        }
        if self.buf.len() >= RESPONSE_BYTES_MAX {
            bail!("response larger than {RESPONSE_BYTES_MAX} bytes");
        }
        let len = (self.buf.len() * 2).min(RESPONSE_BYTES_MAX);
        self.buf.resize(len, 0);
        Ok(())
    }
}

enum Parsed {
    Partial,
    Complete { consumed: usize, response: Response },
}

/// Parses one response from the front of `data`. `eof` says no more bytes will come, which
/// completes a response delimited by the connection closing.
fn parse_response(data: &[u8], keep_body: bool, eof: bool) -> Result<Parsed> {
    let Some(head_len) = find(data, b"\r\n\r\n").map(|i| i + 4) else {
        if data.len() > HEAD_BYTES_MAX {
            bail!("response head longer than {HEAD_BYTES_MAX} bytes");
        }
        return Ok(Parsed::Partial);
    };
    let head = &data[..head_len - 4];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    // "HTTP/1.1 200 OK": version, space, three digits.
    if status_line.len() < 12 || !status_line.starts_with(b"HTTP/1.") || status_line[8] != b' ' {
        bail!("bad status line {:?}", String::from_utf8_lossy(status_line));
    }
    let mut status = 0u16;
    for &b in &status_line[9..12] {
        if !b.is_ascii_digit() {
            bail!("bad status line {:?}", String::from_utf8_lossy(status_line));
        }
        status = status * 10 + u16::from(b - b'0');
    }
    let mut close = status_line[7] == b'0';
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let text = std::str::from_utf8(value).context("content-length not ASCII")?;
            content_length = Some(text.parse().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = contains_token(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                close = true;
            } else if contains_token(value, b"keep-alive") {
                close = false;
            }
        }
    }
    let done = |consumed: usize, body: Vec<u8>, close: bool| {
        Ok(Parsed::Complete {
            consumed,
            response: Response {
                status,
                close,
                body,
            },
        })
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return done(head_len, Vec::new(), close);
    }
    let rest = &data[head_len..];
    if chunked {
        return Ok(match parse_chunked(rest, keep_body)? {
            Some((used, body)) => Parsed::Complete {
                consumed: head_len + used,
                response: Response {
                    status,
                    close,
                    body,
                },
            },
            None => Parsed::Partial,
        });
    }
    match content_length {
        Some(len) if rest.len() >= len => {
            let body = if keep_body {
                rest[..len].to_vec()
            } else {
                Vec::new()
            };
            done(head_len + len, body, close)
        }
        Some(len) if len > RESPONSE_BYTES_MAX => bail!("content-length {len} over the limit"),
        Some(_) => Ok(Parsed::Partial),
        // Neither length nor chunked: the body runs to the end of the connection.
        None if eof => {
            let body = if keep_body { rest.to_vec() } else { Vec::new() };
            done(data.len(), body, true)
        }
        None => Ok(Parsed::Partial),
    }
}

/// Decodes a chunked body; `None` until the terminating chunk and trailers have arrived.
fn parse_chunked(data: &[u8], keep_body: bool) -> Result<Option<(usize, Vec<u8>)>> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(line_len) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = &data[pos..pos + line_len];
        let hex = line.split(|&b| b == b';').next().unwrap_or_default();
        let hex = std::str::from_utf8(trim(hex)).context("chunk size not ASCII")?;
        let size = usize::from_str_radix(hex, 16).context("bad chunk size")?;
        if size > RESPONSE_BYTES_MAX {
            bail!("chunk of {size} bytes over the limit");
        }
        pos += line_len + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(len) = find(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += len + 2;
                if len == 0 {
                    return Ok(Some((pos, body)));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        if keep_body {
            body.extend_from_slice(&data[pos..pos + size]);
        }
        pos += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Sends one request on a fresh connection and returns the response with its body; used by
/// the helpers (login), never on the measured path.
pub async fn one_shot(target: &Target, request: &[u8]) -> Result<Response> {
    let mut conn = Conn::connect(target.addr).await?;
    conn.exchange(request, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &[u8]) -> (usize, Response) {
        match parse_response(data, true, false).unwrap() {
            Parsed::Complete { consumed, response } => (consumed, response),
            Parsed::Partial => panic!("partial"),
        }
    }

    fn is_partial(data: &[u8]) -> bool {
        matches!(parse_response(data, true, false).unwrap(), Parsed::Partial)
    }

    #[test]
    fn content_length_framing() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}HTTP/1.1";
        let (used, r) = parse(raw);
        assert_eq!(used, raw.len() - 8);
        assert_eq!(r.status, 200);
        assert!(!r.close);
        assert_eq!(r.body, b"{\"status\":\"ok\"}");
        assert!(is_partial(&raw[..raw.len() - 10]));
        assert!(is_partial(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n"));
    }

    #[test]
    fn chunked_framing_and_close() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (used, r) = parse(raw);
        assert_eq!(used, raw.len());
        assert_eq!(r.status, 404);
        assert!(r.close);
        assert_eq!(r.body, b"abcde");
        assert!(is_partial(&raw[..raw.len() - 1]));
    }

    #[test]
    fn http10_closes_and_eof_delimits() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert!(is_partial(raw));
        match parse_response(raw, true, true).unwrap() {
            Parsed::Complete { response, .. } => {
                assert!(response.close);
                assert_eq!(response.body, b"hello");
            }
            Parsed::Partial => panic!("partial"),
        }
        assert!(parse_response(b"HTTP/2 200\r\n\r\n", true, false).is_err());
    }

    #[test]
    fn encodes_requests_and_headers() {
        let t = Target::parse("http://127.0.0.1:1/v1/me").unwrap();
        let h = parse_header("Authorization: Bearer abc").unwrap();
        assert_eq!(h, ("Authorization".to_string(), "Bearer abc".to_string()));
        assert!(parse_header("nonsense").is_err());
        let req = encode_request("GET", &t, &[h], None);
        assert_eq!(
            req,
            b"GET /v1/me HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer abc\r\n\r\n"
        );
        let req = encode_request("POST", &t, &[], Some("{}"));
        assert!(req.ends_with(b"Content-Length: 2\r\n\r\n{}"));
    }
}
