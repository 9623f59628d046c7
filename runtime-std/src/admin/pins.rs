//! `/v1/pins`: list, add and remove certificate pins, written back to the
//! pins file.

use super::*;

#[derive(Serialize)]
pub(super) struct PinEntry {
    pin: String,
    kind: &'static str,
    label: String,
    /// `YYYY-MM-DD`: the pin counts until the start of that day (UTC).
    expires: Option<String>,
    expired: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PinRequest {
    pin: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

pub(super) const PIN_EXAMPLE: &str = r#"{"pin": "sha256/<44 base64 characters>", "label": "backup key", "expires": "2027-01-01"} (label and expires optional)"#;

pub(super) fn pin_entry(p: &Pin, now_unix: u64) -> PinEntry {
    let expires = p.expires().and_then(|_| {
        // The pins-file line writes the expiry as `expires=YYYY-MM-DD`,
        // right after the pin and before any label.
        let line = p.display_line().to_string();
        let (_, rest) = line.split_once(" expires=")?;
        Some(rest.get(..10)?.to_owned())
    });
    PinEntry {
        pin: p.to_string(),
        kind: match p.kind() {
            PinKind::Spki => "spki",
            PinKind::Certificate => "certificate",
        },
        label: p.label().to_owned(),
        expires,
        expired: p.is_expired(now_unix),
    }
}

pub(super) async fn list_pins(_: Authorized, State(s): State<AppState>) -> Json<Vec<PinEntry>> {
    let pins: Vec<Pin> = s.guard.with(|e, _| e.pins().iter().cloned().collect());
    let now = unix_now();
    Json(pins.iter().map(|p| pin_entry(p, now)).collect())
}

pub(super) fn parse_pin_request(req: &PinRequest, now_unix: u64) -> Result<Pin, ApiError> {
    let mut pin =
        Pin::parse(req.pin.trim()).map_err(|e| ApiError::bad_request(format!("pin: {e}")))?;
    if let Some(date) = req.expires.as_deref().map(str::trim) {
        let bad = || {
            ApiError::bad_request(format!(
                "expires: {date:?} is not a date YYYY-MM-DD from 1970-01-01 to 9999-12-31"
            ))
        };
        // Only digits and dashes reach the pins-file parser, so the date
        // cannot smuggle in a label or other words.
        if date.len() != 10 || !date.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(bad());
        }
        let dated = parse_pin_line(&format!("{pin} expires={date}"))
            .map_err(|_| bad())?
            .ok_or_else(bad)?;
        if dated.is_expired(now_unix) {
            return Err(ApiError::bad_request(format!(
                "expires: {date} is not in the future: the pin would never count"
            )));
        }
        pin = pin.with_expiry(dated.expires());
    }
    if let Some(label) = req.label.as_deref() {
        pin = pin
            .with_label(label.trim())
            .map_err(|e| ApiError::bad_request(format!("label: {e}")))?;
    }
    Ok(pin)
}

pub(super) async fn add_pin(
    _: Authorized,
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: PinRequest = parse_body(body, PIN_EXAMPLE)?;
    let now = unix_now();
    let pin = parse_pin_request(&req, now)?;
    let entry = pin_entry(&pin, now);
    s.guard
        .with(|e, _| e.add_pin(pin))
        .map_err(|err| match err {
            PinSetError::Duplicate => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "pin: {} is already pinned; delete it first to change its label or expiry",
                    entry.pin
                ),
            ),
            PinSetError::Full { capacity } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("pin set is full: {capacity} pins; delete one first"),
            ),
        })?;
    tracing::info!(pin = %entry.pin, label = %entry.label, "pin added through the admin API");
    let warning = persist_with_pins(&s).await;
    let body = serde_json::to_value(&entry).expect("a pin entry serializes");
    Ok((StatusCode::CREATED, Json(with_warning(body, warning))))
}

pub(super) async fn remove_pin(
    _: Authorized,
    State(s): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let text = path_text(path)?;
    let pin = Pin::parse(text.trim()).map_err(|e| {
        ApiError::bad_request(format!(
            "pin in the path: {e} (URL-encode it: / is %2F, + is %2B, = is %3D)"
        ))
    })?;
    let removed = s.guard.with(|e, _| e.remove_pin(pin.kind(), pin.hash()));
    if removed.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{pin} is not pinned"),
        ));
    }
    tracing::info!(pin = %pin, "pin removed through the admin API");
    Ok(match persist_with_pins(&s).await {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(w) => (StatusCode::OK, Json(json!({ "warning": w }))).into_response(),
    })
}
