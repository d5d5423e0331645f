//! Times as OCI configs hold them: RFC 3339, always written in UTC.

/// Parses an RFC 3339 time strictly (a date, `T`, a time with seconds, a zone: `Z` or an
/// offset; `t`, `z` and `-00:00` as RFC 3339 allows), and returns it normalised to UTC
/// (`2024-05-06T05:08:09Z`) with its seconds since the epoch (0 for times before it: a tar
/// cannot hold them). A time without a zone is refused: Docker, podman and containerd refuse
/// the image it would make.
pub fn parse_rfc3339(text: &str) -> Result<(String, u64), String> {
    static RFC3339: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$").expect("static regex")
    });
    let example = "an RFC 3339 time with a zone, e.g. 1970-01-01T00:00:01Z or 2024-05-06T07:08:09+02:00";
    if !RFC3339.is_match(text) {
        return Err(format!("{text:?} is not {example}"));
    }
    let mut normal = text.replace('t', "T").replace('z', "Z");
    if let Some(local) = normal.strip_suffix("-00:00") {
        normal = format!("{local}Z"); // RFC 3339: UTC, with the local offset unknown
    }
    let time: jiff::Timestamp = normal.parse().map_err(|e| format!("{text:?} is not {example}: {e}"))?;
    Ok((time.to_string(), u64::try_from(time.as_second()).unwrap_or(0)))
}

/// Now, to the second, as RFC 3339 in UTC.
pub fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_strict_rfc_3339_with_any_offset_written_in_utc() {
        assert_eq!(parse_rfc3339("2024-05-06T07:08:09+02:00").unwrap(), ("2024-05-06T05:08:09Z".to_owned(), 1714972089));
        assert_eq!(parse_rfc3339("2024-05-06t05:08:09z").unwrap().0, "2024-05-06T05:08:09Z");
        assert_eq!(parse_rfc3339("2024-05-06T05:08:09-00:00").unwrap().0, "2024-05-06T05:08:09Z");
        assert_eq!(parse_rfc3339("2024-05-06T05:08:09.5Z").unwrap().0, "2024-05-06T05:08:09.5Z");
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z").unwrap(), ("0001-01-01T00:00:00Z".to_owned(), 0));
        for bad in ["2024-05-06T07:08:09", "2024-05-06 07:08:09Z", "2024-05-06T07:08Z", "2024-13-06T07:08:09Z", "yesterday", "2024-05-06T07:08:09+0200"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} accepted");
        }
    }
}
