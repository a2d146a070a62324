//! A small blocking HTTP client for tests (ureq): every status is returned, never turned
//! into an error, so tests can assert on 4xx/5xx bodies.

use serde_json::Value;

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `WWW-Authenticate`, if any.
    pub www_authenticate: Option<String>,
    /// Every header, names in lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub text: String,
}

impl Response {
    /// The first value of header `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// `error.code` of an error envelope.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Response {
    let mut response = result.expect("HTTP request");
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let text = response.body_mut().read_to_string().expect("read body");
    Response {
        status,
        www_authenticate,
        headers,
        text,
    }
}

/// GET `url`: its status and its body as bytes (a KRL).
pub fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let mut response = agent().get(url).call().expect("HTTP request");
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().expect("read body");
    (status, bytes)
}

/// GET `url`.
pub fn get(url: &str) -> Response {
    finish(agent().get(url).call())
}

/// GET `url` with a bearer token.
pub fn get_with_token(url: &str, token: &str) -> Response {
    finish(
        agent()
            .get(url)
            .header("authorization", &format!("Bearer {token}"))
            .call(),
    )
}

/// POST raw `body` to `url`, with a bearer token if given.
pub fn post_raw(url: &str, token: Option<&str>, body: &str) -> Response {
    let mut request = agent().post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    finish(request.send(body))
}

/// POST raw `body` to `url` with these extra headers (name, value).
pub fn post_with_headers(url: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut request = agent().post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    finish(request.send(body))
}

/// POST JSON to `url`; `Err` when no answer came (connection refused or reset).
pub fn try_post(url: &str, token: Option<&str>, body: &Value) -> Result<Response, String> {
    let mut request = agent().post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    match request.send(body.to_string()) {
        Ok(response) => Ok(finish(Ok(response))),
        Err(e) => Err(e.to_string()),
    }
}

/// POST JSON to `url`.
pub fn post(url: &str, token: Option<&str>, body: &Value) -> Response {
    post_raw(url, token, &body.to_string())
}
