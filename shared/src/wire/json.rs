//! Events written as JSON (the CLI's `ttfd publish`, HTTP ingest): the same envelope as
//! SPEC 4 with `v` defaulting to 1 and `ts` to now, turned into MessagePack and passed
//! through [`super::decode`], so that JSON gets exactly the rules of the wire.

use super::{Event, Rejection, decode};

/// Why a JSON envelope is not an event.
#[derive(Debug, thiserror::Error)]
pub enum JsonEventError {
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the event must be a JSON object")]
    NotAnObject,
    #[error("invalid event: {0}")]
    Invalid(#[from] Rejection),
}

/// One JSON envelope as a valid event, with the same rules as the consumers.
pub fn from_json(text: &str, now_ms: i64) -> Result<Event, JsonEventError> {
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    let map = value.as_object_mut().ok_or(JsonEventError::NotAnObject)?;
    map.entry("v").or_insert(1.into());
    map.entry("ts").or_insert(now_ms.into());
    let field = |k: &str| {
        map.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (platform, kind) = (field("platform"), field("kind"));
    // A JSON value always encodes; an error here would be a bug of rmp-serde.
    let bytes = rmp_serde::to_vec_named(&value)
        .map_err(|e| Rejection::new("undecodable", format!("cannot encode: {e}")))?;
    Ok(decode(&bytes, (&platform, &kind), now_ms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn v_and_ts_default_and_the_wire_rules_apply() {
        let e = from_json(
            r#"{"id":"x:1","platform":"website","user":"u1","kind":"message","data":{}}"#,
            NOW,
        )
        .expect("valid");
        assert_eq!((e.id.as_str(), e.ts), ("x:1", NOW));
        let err = from_json(
            r#"{"id":"x:1","platform":"website","user":"u1","kind":"nope","data":{}}"#,
            NOW,
        )
        .expect_err("unknown kind");
        assert!(matches!(err, JsonEventError::Invalid(_)), "{err}");
        assert!(matches!(
            from_json("[1]", NOW),
            Err(JsonEventError::NotAnObject)
        ));
        assert!(matches!(
            from_json("{", NOW),
            Err(JsonEventError::NotJson(_))
        ));
    }
}
