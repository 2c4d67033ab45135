//! `--since` / `--before`: an RFC 3339 time, or a duration meaning "that long ago".

use std::time::{Duration, SystemTime};

/// Parses `1h`, `30m`, `2d 4h` (that long before `now`), or RFC 3339:
/// `2026-05-01T10:00:00Z`, `2026-05-01T12:00:00.5+02:00`, `2026-05-01 10:00:00` (UTC),
/// `2026-05-01` (midnight UTC).
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "invalid time {s:?}: give an RFC 3339 time (2026-05-01T10:00:00Z, \
             2026-05-01T12:00:00+02:00, 2026-05-01) or a duration ago (30m, 1h, 2d)"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return now.checked_sub(d).ok_or_else(bad);
    }
    // date only
    if s.len() == 10 {
        return humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")).map_err(|_| bad());
    }
    // split off the zone: `Z`, or `+HH:MM` / `-HH:MM` after the time of day
    let (local, offset_secs) = if let Some(l) = s.strip_suffix(['Z', 'z']) {
        (l, 0i64)
    } else if s.len() > 19 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-') {
        let (l, zone) = s.split_at(s.len() - 6);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let hh: i64 = zone[1..3].parse().map_err(|_| bad())?;
        let mm: i64 = zone[4..6].parse().map_err(|_| bad())?;
        if &zone[3..4] != ":" || hh > 23 || mm > 59 {
            return Err(bad());
        }
        (l, sign * (hh * 3600 + mm * 60))
    } else {
        (s, 0)
    };
    let t = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    // local time = UTC + offset
    let secs = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        t.checked_sub(secs)
    } else {
        t.checked_add(secs)
    }
    .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc(t: SystemTime) -> String {
        humantime::format_rfc3339_seconds(t).to_string()
    }

    #[test]
    fn relative_durations_are_ago() {
        let now = humantime::parse_rfc3339("2026-05-01T10:00:00Z").unwrap();
        assert_eq!(rfc(parse_time("1h", now).unwrap()), "2026-05-01T09:00:00Z");
        assert_eq!(rfc(parse_time("30m", now).unwrap()), "2026-05-01T09:30:00Z");
        assert_eq!(rfc(parse_time("2d", now).unwrap()), "2026-04-29T10:00:00Z");
        assert_eq!(
            rfc(parse_time("1h 30m", now).unwrap()),
            "2026-05-01T08:30:00Z"
        );
    }

    #[test]
    fn rfc3339_with_zones() {
        let now = SystemTime::now();
        let p = |s: &str| rfc(parse_time(s, now).unwrap());
        assert_eq!(p("2026-05-01T10:00:00Z"), "2026-05-01T10:00:00Z");
        assert_eq!(p("2026-05-01T12:00:00+02:00"), "2026-05-01T10:00:00Z");
        assert_eq!(p("2026-05-01T05:30:00-04:30"), "2026-05-01T10:00:00Z");
        assert_eq!(p("2026-05-01T10:00:00.250Z"), "2026-05-01T10:00:00Z");
        assert_eq!(p("2026-05-01 10:00:00"), "2026-05-01T10:00:00Z");
        assert_eq!(p("2026-05-01"), "2026-05-01T00:00:00Z");
    }

    #[test]
    fn nonsense_is_rejected_with_examples() {
        for s in [
            "yesterday",
            "",
            "2026-13-01",
            "10:00",
            "2026-05-01T10:00:00+2:00",
        ] {
            let e = parse_time(s, SystemTime::now()).unwrap_err();
            assert!(e.contains("RFC 3339") && e.contains("1h"), "{s}: {e}");
        }
    }
}
