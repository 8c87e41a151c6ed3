//! The webhook body → the event's JSON bytes. GitHub sends either `application/json` or
//! `application/x-www-form-urlencoded` with the JSON in the `payload` field.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty")]
    Empty,
    #[error("content type {0:?} is not supported; use application/json or application/x-www-form-urlencoded")]
    UnsupportedContentType(String),
    #[error("the form-encoded body has no payload field")]
    NoPayloadField,
}

/// The JSON of the delivery, borrowed when the body is JSON already.
pub fn event_json<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<Cow<'a, [u8]>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    let media_type = content_type
        .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .filter(|ct| !ct.is_empty());
    let form = match media_type.as_deref() {
        Some("application/json") => false,
        Some(ct) if ct.ends_with("+json") => false,
        Some("application/x-www-form-urlencoded") => true,
        Some(other) => return Err(BodyError::UnsupportedContentType(other.to_owned())),
        // No content type (some proxies drop it): JSON starts with `{`, a form with `payload=`.
        None => body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{'),
    };
    if !form {
        return Ok(Cow::Borrowed(body));
    }
    form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, value)| Cow::Owned(value.into_owned().into_bytes()))
        .ok_or(BodyError::NoPayloadField)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_pass_through_unchanged() {
        let body = br#"{"zen":"x"}"#;
        assert_eq!(event_json(Some("application/json"), body).unwrap().as_ref(), body);
        assert_eq!(event_json(Some("Application/JSON; charset=utf-8"), body).unwrap().as_ref(), body);
        assert_eq!(event_json(None, body).unwrap().as_ref(), body);
    }

    #[test]
    fn form_bodies_yield_the_payload_field() {
        let body = b"other=1&payload=%7B%22zen%22%3A%22a+b%22%7D";
        let json = event_json(Some("application/x-www-form-urlencoded"), body).unwrap();
        assert_eq!(json.as_ref(), br#"{"zen":"a b"}"#);
        assert_eq!(event_json(None, body).unwrap().as_ref(), br#"{"zen":"a b"}"#);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert_eq!(event_json(Some("application/json"), b"  "), Err(BodyError::Empty));
        assert_eq!(event_json(Some("application/x-www-form-urlencoded"), b"a=1"), Err(BodyError::NoPayloadField));
        assert!(matches!(event_json(Some("text/plain"), b"x"), Err(BodyError::UnsupportedContentType(_))));
    }
}
