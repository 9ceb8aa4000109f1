//! `rabbitmq.on_oversized`, `rabbitmq.on_unroutable` and `rabbitmq.dead_letter_exchange`: the
//! opt-in ways to set one poison row aside instead of holding the stream (the default, "stop").

use super::ConfigError;
use crate::sink::DeadLetters;

pub(super) fn validate(
    on_oversized: Option<&str>,
    on_unroutable: Option<&str>,
    exchange: Option<String>,
    stream: bool,
) -> Result<DeadLetters, ConfigError> {
    let policy = |key: &str, v: Option<&str>| match v {
        None | Some("stop") => Ok(false),
        Some("dead_letter") => Ok(true),
        Some(_) => Err(ConfigError::new(
            key,
            "must be \"stop\" or \"dead_letter\"".into(),
        )),
    };
    let oversized = policy("rabbitmq.on_oversized", on_oversized)?;
    let unroutable = policy("rabbitmq.on_unroutable", on_unroutable)?;
    if unroutable && stream {
        return Err(ConfigError::new(
            "rabbitmq.on_unroutable",
            "applies to exchanges only: a stream takes every message, so nothing is unroutable there".into(),
        ));
    }
    let unroutable_to = match (unroutable, exchange) {
        (true, Some(x)) if !x.is_empty() && x.len() <= 255 => Some(x),
        (true, Some(_)) => {
            return Err(ConfigError::new(
                "rabbitmq.dead_letter_exchange",
                "must be 1 to 255 bytes".into(),
            ));
        }
        (true, None) => {
            return Err(ConfigError::new(
                "rabbitmq.on_unroutable",
                "\"dead_letter\" needs rabbitmq.dead_letter_exchange: the exchange unroutable events go to".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(ConfigError::new(
                "rabbitmq.dead_letter_exchange",
                "is used only with rabbitmq.on_unroutable = \"dead_letter\"".into(),
            ));
        }
        (false, None) => None,
    };
    Ok(DeadLetters {
        oversized,
        unroutable_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let ok = validate(
            Some("dead_letter"),
            Some("dead_letter"),
            Some("dlx".into()),
            false,
        )
        .unwrap();
        assert!(ok.oversized);
        assert_eq!(ok.unroutable_to.as_deref(), Some("dlx"));
        let off = validate(None, Some("stop"), None, true).unwrap();
        assert!(!off.oversized && off.unroutable_to.is_none());
        let key = |r: Result<DeadLetters, ConfigError>| r.unwrap_err().key;
        assert_eq!(
            key(validate(Some("drop"), None, None, false)),
            "rabbitmq.on_oversized"
        );
        assert_eq!(
            key(validate(None, Some("dead_letter"), None, false)),
            "rabbitmq.on_unroutable"
        );
        assert_eq!(
            key(validate(
                None,
                Some("dead_letter"),
                Some("dlx".into()),
                true
            )),
            "rabbitmq.on_unroutable"
        );
        assert_eq!(
            key(validate(None, None, Some("dlx".into()), false)),
            "rabbitmq.dead_letter_exchange"
        );
        // The stream sink may still replace oversized events by claim checks.
        assert!(
            validate(Some("dead_letter"), None, None, true)
                .unwrap()
                .oversized
        );
    }
}
