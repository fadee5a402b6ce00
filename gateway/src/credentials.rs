//! Where a client's backend choice and token come from: the `ID` and `Authorization`
//! headers, or — for browsers, which cannot set headers on a WebSocket — the query string
//! a `Sec-WebSocket-Protocol` entry and a cookie, each only when `[browser]` enables it.

use std::borrow::Cow;

use hyper::header;
use hyper::Request;

use crate::auth::AuthError;
use crate::config::BrowserConfig;
use crate::refusal::Refusal;

/// What the client asked for and proved with.
#[derive(Debug)]
pub struct Credentials<'r> {
    /// The backend ID.
    pub backend_id: Cow<'r, str>,
    /// The bearer token, or why there is none usable.
    pub token: Result<Cow<'r, str>, AuthError>,
    /// The subprotocols to offer the backend: the client's, minus a token entry.
    pub backend_protocols: Option<Cow<'r, str>>,
    /// The token entry of `Sec-WebSocket-Protocol`, if the token came that way.
    pub token_protocol: Option<&'r str>,
}

/// Extracts the backend ID (400 when there is none) and the token (checked later).
pub fn extract<'r, B>(
    req: &'r Request<B>,
    browser: &BrowserConfig,
) -> Result<Credentials<'r>, Refusal> {
    let query = req.uri().query().unwrap_or("");
    let headers = req.headers();

    // One value each: a second line would be read differently by different parsers
    // (first wins, last wins, joined), and the backend would see both.
    if headers.get_all("id").iter().nth(1).is_some() {
        return Err(Refusal::BadRequest("repeated ID header"));
    }
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Refusal::BadRequest("repeated Authorization header"));
    }
    if let (None, Some(name)) = (headers.get("id"), browser.id_query.as_deref()) {
        let named = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, v)| k == name && !v.is_empty())
            .count();
        if named > 1 {
            return Err(Refusal::BadRequest("repeated ID query parameter"));
        }
    }
    let backend_id = match headers.get("id") {
        Some(v) => Cow::Borrowed(v.to_str().map_err(|_| Refusal::UnknownBackend)?.trim()),
        None => backend_named(req, browser).ok_or(Refusal::MissingId)?,
    };
    if backend_id.is_empty() {
        return Err(Refusal::MissingId);
    }

    // The header may come on several lines, which mean one list together (RFC 6455
    // section 11.3.4).
    let offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL);
    let lines = || offered.iter().filter_map(|v| v.to_str().ok());
    let entries = || {
        lines()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    };
    let prefix = browser.token_protocol_prefix.as_deref();
    // Every entry with the token prefix is a credential: none is offered to the backend,
    // also when the token came another way or a second one was offered.
    let is_token = |p: &str| prefix.is_some_and(|prefix| has_prefix(p, prefix));
    let token_protocol = prefix
        .and_then(|prefix| entries().find(|p| has_prefix(p, prefix) && p.len() > prefix.len()));
    let backend_protocols = if lines().count() == 1 && !entries().any(is_token) {
        lines().next().map(Cow::Borrowed)
    } else {
        let rest: Vec<&str> = entries().filter(|p| !is_token(p)).collect();
        (!rest.is_empty()).then(|| Cow::Owned(rest.join(", ")))
    };

    // A Bearer header wins; another scheme (a browser's cached Basic credentials for the
    // site) is no token, and the browser's own ways are looked at as without one (none
    // found, the header's problem is the answer).
    let from_header = headers
        .get(header::AUTHORIZATION)
        .map(|value| bearer(value.as_bytes()));
    let token = match from_header {
        Some(Ok(token)) => Ok(Cow::Borrowed(token)),
        Some(Err(_)) | None => {
            let from_query = browser
                .token_query
                .as_deref()
                .and_then(|name| query_param(query, name));
            let from_protocol = || {
                let prefix = browser.token_protocol_prefix.as_deref()?;
                token_protocol.map(|entry| Cow::Borrowed(&entry[prefix.len()..]))
            };
            let from_cookie = || cookie(headers, browser.token_cookie.as_deref()?);
            from_query
                .or_else(from_protocol)
                .or_else(from_cookie)
                .ok_or(match from_header {
                    Some(Err(e)) => e,
                    _ => AuthError::Missing,
                })
        }
    };
    Ok(Credentials {
        backend_id,
        token,
        backend_protocols,
        token_protocol,
    })
}

/// The backend ID a request names, by its `ID` header or (with `[browser] id_query`) its
/// query string; for the log line of a refused request too.
pub fn backend_named<'r, B>(req: &'r Request<B>, browser: &BrowserConfig) -> Option<Cow<'r, str>> {
    match req.headers().get("id") {
        Some(v) => v.to_str().ok().map(|v| Cow::Borrowed(v.trim())),
        None => query_param(req.uri().query()?, browser.id_query.as_deref()?),
    }
}

/// Longest backend ID written to a log line as the client sent it: configured IDs are
/// short, and a 16 KB header would otherwise make a 16 KB line for every refusal.
pub const LOGGED_ID_CHARS: usize = 64;

/// The backend ID a request names (see [`backend_named`]) as logged: cut to
/// [`LOGGED_ID_CHARS`] characters, with `…` marking a cut.
pub fn logged_backend<'r, B>(req: &'r Request<B>, browser: &BrowserConfig) -> Option<Cow<'r, str>> {
    Some(match backend_named(req, browser)? {
        Cow::Borrowed(id) => logged_id(id),
        Cow::Owned(id) => Cow::Owned(logged_id(&id).into_owned()),
    })
}

/// `id` cut to [`LOGGED_ID_CHARS`] characters, with `…` marking a cut.
fn logged_id(id: &str) -> Cow<'_, str> {
    match id.char_indices().nth(LOGGED_ID_CHARS) {
        None => Cow::Borrowed(id),
        Some((end, _)) => Cow::Owned(format!("{}…", &id[..end])),
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| AuthError::NotBearer)?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}

/// The value of the cookie `name` in the request's `Cookie` headers, if not empty.
/// Other cookies on the line may be any bytes (a page's cookie with an accent, say): the
/// line is split as bytes, and only the named cookie's value has to be text. An empty
/// one is passed over.
fn cookie<'r>(headers: &'r hyper::HeaderMap, name: &str) -> Option<Cow<'r, str>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|c| {
            let eq = c.iter().position(|b| *b == b'=')?;
            let (n, v) = (&c[..eq], &c[eq + 1..]);
            (n.trim_ascii() == name.as_bytes()).then_some(v)
        })
        .filter_map(|v| std::str::from_utf8(v).ok())
        .map(|v| v.trim().trim_matches('"'))
        .find(|v| !v.is_empty())
        .map(Cow::Borrowed)
}

/// The first non-empty value of the query parameter `name`.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// Whether the subprotocol entry `p` starts with the token `prefix`, in any case.
fn has_prefix(p: &str, prefix: &str) -> bool {
    p.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_id_is_cut_for_the_log_on_a_character_boundary() {
        assert_eq!(logged_id("Backend_ABC"), "Backend_ABC");
        let exact = "x".repeat(LOGGED_ID_CHARS);
        assert_eq!(logged_id(&exact), exact);
        let long = "é".repeat(16 << 10);
        let cut = logged_id(&long);
        assert_eq!(cut.chars().count(), LOGGED_ID_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    fn browser() -> BrowserConfig {
        BrowserConfig {
            id_query: Some("id".into()),
            token_query: Some("access_token".into()),
            token_protocol_prefix: Some("bearer.".into()),
            allowed_origins: Vec::new(),
            token_cookie: Some("wsgate_token".into()),
        }
    }

    #[test]
    fn headers_win_and_browser_sources_need_opting_in() -> Result<(), Box<dyn std::error::Error>> {
        let req = Request::get("/gateway?id=Q&access_token=T")
            .header("ID", "H")
            .header("Authorization", "Bearer X")
            .body(())?;
        let c = extract(&req, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(
            (c.backend_id.as_ref(), c.token.as_deref().ok()),
            ("H", Some("X"))
        );

        let query_only = Request::get("/gateway?id=Q&access_token=T%2B").body(())?;
        let c = extract(&query_only, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(
            (c.backend_id.as_ref(), c.token.as_deref().ok()),
            ("Q", Some("T+"))
        );

        let off = BrowserConfig::default();
        let req = Request::get("/gateway?id=Q&access_token=T").body(())?;
        assert!(matches!(extract(&req, &off), Err(Refusal::MissingId)));
        let req = Request::get("/gateway?access_token=T")
            .header("ID", "H")
            .body(())?;
        assert_eq!(
            extract(&req, &off).map_err(|e| e.to_string())?.token.err(),
            Some(AuthError::Missing)
        );
        Ok(())
    }

    #[test]
    fn odd_browser_requests_still_find_their_token() -> Result<(), Box<dyn std::error::Error>> {
        let token = |req: &Request<()>| {
            extract(req, &browser())
                .map_err(|e| e.to_string())
                .map(|c| c.token.map(|t| t.into_owned()))
        };
        // A page's cookie that is not ASCII, on the token cookie's line.
        let mut accented = Request::get("/gateway").header("ID", "H").body(())?;
        accented.headers_mut().insert(
            "Cookie",
            hyper::header::HeaderValue::from_bytes("name=José; wsgate_token=T".as_bytes())?,
        );
        assert_eq!(token(&accented)?, Ok("T".to_owned()));
        // An empty value before the real one.
        let empty_cookie = Request::get("/gateway")
            .header("ID", "H")
            .header("Cookie", "wsgate_token=; wsgate_token=T")
            .body(())?;
        assert_eq!(token(&empty_cookie)?, Ok("T".to_owned()));
        let empty_query = Request::get("/gateway?access_token=&access_token=T")
            .header("ID", "H")
            .body(())?;
        assert_eq!(token(&empty_query)?, Ok("T".to_owned()));
        // The protocol prefix in another case is the token entry too, not a subprotocol.
        let upper = Request::get("/gateway")
            .header("ID", "H")
            .header("Sec-WebSocket-Protocol", "chat, Bearer.T")
            .body(())?;
        let c = extract(&upper, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(c.token.as_deref().ok(), Some("T"));
        assert_eq!(c.backend_protocols.as_deref(), Some("chat"));
        // A browser's Basic credentials for the site are no token, and hide none.
        let basic = Request::get("/gateway")
            .header("ID", "H")
            .header("Authorization", "Basic dXNlcjpwdw==")
            .header("Cookie", "wsgate_token=T")
            .body(())?;
        assert_eq!(token(&basic)?, Ok("T".to_owned()));
        let basic_alone = Request::get("/gateway")
            .header("ID", "H")
            .header("Authorization", "Basic dXNlcjpwdw==")
            .body(())?;
        assert_eq!(token(&basic_alone)?, Err(AuthError::NotBearer));
        // An empty ID parameter is passed over; two that name backends are refused.
        let empty_id = Request::get("/gateway?id=&id=Q").body(())?;
        let c = extract(&empty_id, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(c.backend_id.as_ref(), "Q");
        let two_ids = Request::get("/gateway?id=P&id=Q").body(())?;
        assert_eq!(
            extract(&two_ids, &browser()).err().map(|e| e.to_string()),
            Some("repeated ID query parameter".to_owned())
        );
        Ok(())
    }

    #[test]
    fn a_refused_request_names_its_backend_however_it_named_it(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let by_query = Request::get("/gateway?id=Backend_Q").body(())?;
        assert_eq!(
            backend_named(&by_query, &browser()).as_deref(),
            Some("Backend_Q")
        );
        assert_eq!(backend_named(&by_query, &BrowserConfig::default()), None);
        let by_header = Request::get("/gateway?id=Q").header("ID", " H ").body(())?;
        assert_eq!(backend_named(&by_header, &browser()).as_deref(), Some("H"));
        Ok(())
    }

    #[test]
    fn repeated_id_or_authorization_lines_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let two_ids = Request::get("/gateway")
            .header("ID", "Backend_ABC")
            .header("ID", "Backend_BILL")
            .header("Authorization", "Bearer X")
            .body(())?;
        let e = extract(&two_ids, &browser())
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(e, Err("repeated ID header".to_owned()));
        let two_tokens = Request::get("/gateway")
            .header("ID", "Backend_ABC")
            .header("Authorization", "Bearer X")
            .header("Authorization", "Basic eDp5")
            .body(())?;
        let e = extract(&two_tokens, &browser())
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(e, Err("repeated Authorization header".to_owned()));
        Ok(())
    }

    #[test]
    fn token_in_a_cookie_comes_last_and_only_by_its_name() -> Result<(), Box<dyn std::error::Error>>
    {
        let token = |req: &Request<()>| {
            extract(req, &browser())
                .map_err(|e| e.to_string())
                .map(|c| c.token.ok().map(Cow::into_owned))
        };
        let req = Request::get("/gateway?id=Q")
            .header("Cookie", "theme=dark; wsgate_token=C.D.E ; x=1")
            .body(())?;
        assert_eq!(token(&req)?.as_deref(), Some("C.D.E"));
        let req = Request::get("/gateway?id=Q")
            .header("Cookie", "theme=dark")
            .header("Cookie", "wsgate_token=\"F.G.H\"")
            .body(())?;
        assert_eq!(
            token(&req)?.as_deref(),
            Some("F.G.H"),
            "second header, quoted"
        );
        let req = Request::get("/gateway?id=Q")
            .header("Cookie", "my_wsgate_token=X; wsgate_token=")
            .body(())?;
        assert_eq!(token(&req)?, None, "another name, an empty value");
        let req = Request::get("/gateway?id=Q")
            .header("Authorization", "Bearer A")
            .header("Cookie", "wsgate_token=C")
            .body(())?;
        assert_eq!(token(&req)?.as_deref(), Some("A"), "the header wins");
        let off = BrowserConfig {
            token_cookie: None,
            ..browser()
        };
        let req = Request::get("/gateway?id=Q")
            .header("Cookie", "wsgate_token=C")
            .body(())?;
        let c = extract(&req, &off).map_err(|e| e.to_string())?;
        assert_eq!(
            c.token.err(),
            Some(AuthError::Missing),
            "not without opting in"
        );
        Ok(())
    }

    #[test]
    fn token_in_a_subprotocol_entry_is_taken_out_of_the_backend_offer(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let req = Request::get("/gateway?id=Q")
            .header("Sec-WebSocket-Protocol", "chat, bearer.a.b.c")
            .body(())?;
        let c = extract(&req, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(c.token.as_deref().ok(), Some("a.b.c"));
        assert_eq!(c.backend_protocols.as_deref(), Some("chat"));
        assert_eq!(c.token_protocol, Some("bearer.a.b.c"));
        Ok(())
    }

    #[test]
    fn subprotocols_on_several_lines_are_one_offer() -> Result<(), Box<dyn std::error::Error>> {
        let req = Request::get("/gateway?id=Q")
            .header("Sec-WebSocket-Protocol", "chat1")
            .header("Sec-WebSocket-Protocol", "chat2, bearer.a.b.c")
            .body(())?;
        let c = extract(&req, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(c.backend_protocols.as_deref(), Some("chat1, chat2"));
        assert_eq!(c.token.as_deref().ok(), Some("a.b.c"));
        let no_token = BrowserConfig {
            token_protocol_prefix: None,
            ..browser()
        };
        let c = extract(&req, &no_token).map_err(|e| e.to_string())?;
        assert_eq!(
            c.backend_protocols.as_deref(),
            Some("chat1, chat2, bearer.a.b.c")
        );
        Ok(())
    }

    #[test]
    fn no_token_entry_reaches_the_backend_however_many_are_offered(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let req = Request::get("/gateway?id=Q")
            .header("Sec-WebSocket-Protocol", "bearer.a.b.c, chat")
            .header("Sec-WebSocket-Protocol", "bearer.d.e.f")
            .body(())?;
        let c = extract(&req, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(c.token.as_deref().ok(), Some("a.b.c"));
        assert_eq!(c.backend_protocols.as_deref(), Some("chat"));
        let with_header = Request::get("/gateway?id=Q")
            .header("Authorization", "Bearer x.y.z")
            .header("Sec-WebSocket-Protocol", "bearer.a.b.c")
            .body(())?;
        let c = extract(&with_header, &browser()).map_err(|e| e.to_string())?;
        assert_eq!(c.token.as_deref().ok(), Some("x.y.z"));
        assert_eq!(c.backend_protocols, None);
        Ok(())
    }
}
