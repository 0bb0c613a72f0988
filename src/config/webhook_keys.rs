//! The webhook signing key and CA file as `webhooks.*` gives them: read here, so a bad one fails
//! at start naming its key, and `events::webhooks` takes them as read.

/// The key bytes of `webhooks.signing_key`: base64-decoded after a `whsec_` prefix (the form
/// Standard Webhooks libraries take), else the string's own bytes.
pub fn key_bytes(signing_key: &str) -> Vec<u8> {
    use base64::Engine;
    match signing_key.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim_end_matches('='))
            })
            .unwrap_or_default(),
        None => signing_key.as_bytes().to_vec(),
    }
}

/// The CA certificates of a PEM file (`webhooks.ca_file`); an error names what is wrong.
pub fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
