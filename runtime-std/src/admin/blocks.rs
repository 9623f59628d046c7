//! `/v1/blocks`: list, add and lift blocks.

use super::*;

#[derive(Serialize)]
pub(super) struct BlockEntry {
    client: String,
    cause: &'static str,
    /// `None`: until lifted.
    remaining_seconds: Option<u64>,
    offences: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockRequest {
    ip: String,
    #[serde(default)]
    duration: Option<String>,
}

pub(super) const BLOCK_EXAMPLE: &str =
    r#"{"ip": "192.0.2.7", "duration": "10m"} (duration null or left out: until unblocked)"#;

pub(super) fn remaining_seconds(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000)
}

pub(super) async fn list_blocks(_: Authorized, State(s): State<AppState>) -> Json<Vec<BlockEntry>> {
    let (prefix, now, mut blocks) = s
        .guard
        .with(|e, now| (e.policy().ipv6_prefix, now, e.blocks().collect::<Vec<_>>()));
    blocks.sort_by_key(|b| b.client.bits());
    Json(
        blocks
            .into_iter()
            .map(|b| BlockEntry {
                client: b.client.display(prefix).to_string(),
                cause: b.cause.as_str(),
                remaining_seconds: b
                    .until
                    .map(|u| remaining_seconds(u.as_millis(), now.as_millis())),
                offences: b.offences,
            })
            .collect(),
    )
}

/// An address as the API takes it: `192.0.2.7`, `2001:db8::1`, or a client
/// as `GET /v1/blocks` lists it (`2001:db8:1:2::/64` with the policy's
/// prefix length, or an IPv4 address with `/32`).
pub(super) fn parse_client(text: &str, ipv6_prefix: u8, field: &str) -> Result<IpAddr, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "{field}: {text:?} is not an IP address (expected like 192.0.2.7 or 2001:db8::1)"
        ))
    };
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    match (ip, len) {
        (_, None) | (IpAddr::V4(_), Some(32)) => Ok(ip),
        (IpAddr::V6(_), Some(l)) if l == ipv6_prefix => Ok(ip),
        _ => Err(ApiError::bad_request(format!(
            "{field}: {text:?}: only single clients can be blocked: an IPv4 address, or an IPv6 \
             address (clients are IPv6 /{ipv6_prefix} networks); use the denylist for networks"
        ))),
    }
}

/// A block duration: as the config file writes durations (`90s`, `10m`,
/// `1h`, `7d`), and not zero.
pub(super) fn parse_block_duration(text: &str) -> Result<Duration, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("duration: {e}"));
    match crate::config::parse_duration(text.trim()).map_err(bad)? {
        Duration::ZERO => Err(bad(format!(
            "{text:?} is zero: use null or leave it out to block until unblocked"
        ))),
        d => Ok(d),
    }
}

pub(super) async fn add_block(
    _: Authorized,
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: BlockRequest = parse_body(body, BLOCK_EXAMPLE)?;
    let prefix = s.guard.with(|e, _| e.policy().ipv6_prefix);
    let ip = parse_client(&req.ip, prefix, "ip")?;
    let duration = req
        .duration
        .as_deref()
        .map(parse_block_duration)
        .transpose()?;
    let entry = s
        .guard
        .with(|e, now| {
            e.block(now, ip, duration, BlockCause::Manual)?;
            let prefix = e.policy().ipv6_prefix;
            Ok(BlockEntry {
                client: e.client_key(ip).display(prefix).to_string(),
                cause: BlockCause::Manual.as_str(),
                remaining_seconds: duration.map(|d| d.as_millis().div_ceil(1000) as u64),
                offences: e.client_info(ip).map_or(0, |i| i.offences),
            })
        })
        .map_err(|err| match err {
            CommandError::Allowlisted => ApiError::new(
                StatusCode::CONFLICT,
                format!("ip: {ip} is allowlisted, and the allowlist takes precedence over blocks"),
            ),
            CommandError::ClientTableFull => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, err.to_string())
            }
        })?;
    tracing::info!(
        client = %entry.client,
        duration_s = duration.map(|d| d.as_secs()),
        "client blocked through the admin API"
    );
    let warning = persist(&s).await;
    let body = serde_json::to_value(&entry).expect("a block entry serializes");
    Ok((StatusCode::CREATED, Json(with_warning(body, warning))))
}

pub(super) async fn remove_block(
    _: Authorized,
    State(s): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let text = path_text(path)?;
    let prefix = s.guard.with(|e, _| e.policy().ipv6_prefix);
    let ip = parse_client(&text, prefix, "address in the path")?;
    let (lifted, denylisted) = s
        .guard
        .with(|e, now| (e.unblock(now, ip), e.denylist().contains(ip)));
    if !lifted {
        let mut message = format!("{ip} is not blocked");
        if denylisted {
            message.push_str(" (it is on the denylist, which is changed in the configuration)");
        }
        return Err(ApiError::new(StatusCode::NOT_FOUND, message));
    }
    tracing::info!(%ip, "client unblocked through the admin API");
    Ok(match persist(&s).await {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(w) => (StatusCode::OK, Json(json!({ "warning": w }))).into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_durations_need_a_unit_and_a_positive_number() {
        assert_eq!(
            parse_block_duration("90s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_block_duration("10m").unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_block_duration("1h").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse_block_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in [
            "",
            "10",
            "m",
            "0s",
            "1.5h",
            "-1m",
            "10 m",
            "5y",
            "99999999999999999999d",
        ] {
            let e = parse_block_duration(bad).unwrap_err();
            assert!(
                e.message.starts_with("duration: "),
                "{bad:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn clients_parse_as_addresses_or_as_listed() {
        assert_eq!(
            parse_client("192.0.2.7", 64, "ip").unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert!(parse_client("2001:db8:1:2::/64", 64, "ip").is_ok());
        assert!(parse_client("192.0.2.7/32", 64, "ip").is_ok());
        assert!(parse_client("10.0.0.0/8", 64, "ip").is_err());
        assert!(parse_client("2001:db8::/48", 64, "ip").is_err());
        assert!(parse_client("example.com", 64, "ip").is_err());
    }
}
