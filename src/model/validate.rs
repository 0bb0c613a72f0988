//! What a request that fails validation gets: each variant a 400 with its own code (the HTTP
//! mapping is `error::ApiError`'s).

/// A request that fails validation. Each variant is a 400 with its own code.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    UnknownType(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    SchemeNotAllowed(String),
}

impl RequestError {
    /// The same error with a field path prefix replaced (`outputs[0]` -> `output` for a request
    /// that used the single `output` form).
    pub fn reprefixed(self, from: &str, to: &str) -> Self {
        match self {
            RequestError::Invalid { field, message } if field.starts_with(from) => {
                RequestError::Invalid {
                    message: message.replacen(from, to, 1),
                    field: format!("{to}{}", &field[from.len()..]),
                }
            }
            other => other,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        RequestError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn field(&self) -> Option<&str> {
        match self {
            RequestError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
