//! Image signatures as cosign makes them, and podman (containers/image) verifies them.
//!
//! - **Keys**: ECDSA P-256. The private key is its PKCS#8 DER, encrypted the way cosign does
//!   (go-tuf's `encrypted` format: scrypt N=32768 r=8 p=1 over the password with a random
//!   32-byte salt, then NaCl secretbox with a random 24-byte nonce), as JSON inside the PEM
//!   type `ENCRYPTED COSIGN PRIVATE KEY`, the only private-key type containers/image reads.
//!   The public key is PEM `PUBLIC KEY` (PKIX).
//! - **Payload**: the "simple signing" JSON naming the image's repository
//!   (`docker-reference`) and manifest digest (`docker-manifest-digest`).
//! - **Signature**: ECDSA P-256 over the payload's SHA-256, ASN.1 DER, base64: what the
//!   `dev.cosignproject.cosign/signature` annotation holds on the payload's layer in the
//!   signature manifest (tag `sha256-<manifest hex>.sig`; strata-transport stores it).
//!
//! Written here rather than with sigstore-rs: that crate brings a whole client (TUF, Rekor,
//! Fulcio, OAuth) for the three operations strata needs, which RustCrypto's p256, scrypt and
//! crypto_secretbox do as the format asks.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::DerSignature;
pub use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use strata_oci::digest::Digest;

/// The PEM type of an encrypted private key, as cosign wrote it and containers/image reads it.
pub const PRIVATE_KEY_PEM: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// scrypt's cost, as cosign sets it: N = 2^15, r = 8, p = 1.
const SCRYPT_LOG_N: u8 = 15;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what}: not a key strata reads ({why})")]
    BadKey { what: String, why: String },
    #[error("{what}: wrong password, or the key is damaged")]
    WrongPassword { what: String },
    #[error("no randomness from the system")]
    Random(#[from] getrandom::Error),
    #[error("the signature is not valid for this payload and key")]
    BadSignature,
    #[error("the signature's payload is not a simple-signing payload: {0}")]
    BadPayload(String),
    #[error("the signature is for {signed}, not {expected}")]
    OtherImage { signed: String, expected: String },
}

/// A new key pair: the private key's PEM (encrypted with `password`) and the public key's.
pub fn generate(password: &[u8]) -> Result<(String, String), SignError> {
    let mut seed = [0u8; 32];
    let key = loop {
        getrandom::getrandom(&mut seed)?;
        if let Ok(key) = SigningKey::from_slice(&seed) {
            break key;
        }
    };
    let der = key.to_pkcs8_der().map_err(|e| SignError::BadKey { what: "the new key".into(), why: e.to_string() })?;
    let private = pem(PRIVATE_KEY_PEM, &encrypt(der.as_bytes(), password)?);
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| SignError::BadKey { what: "the new key".into(), why: e.to_string() })?;
    Ok((private, public))
}

#[derive(Serialize, Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

fn derive_key(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32], String> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| e.to_string())?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key).map_err(|e| e.to_string())?;
    Ok(key)
}

fn encrypt(plaintext: &[u8], password: &[u8]) -> Result<Vec<u8>, SignError> {
    let (mut salt, mut nonce) = ([0u8; 32], [0u8; 24]);
    getrandom::getrandom(&mut salt)?;
    getrandom::getrandom(&mut nonce)?;
    let bad = |why: String| SignError::BadKey { what: "the new key".into(), why };
    let key = derive_key(password, &salt, SCRYPT_LOG_N, 8, 1).map_err(bad)?;
    let ciphertext = XSalsa20Poly1305::new(&key.into()).encrypt(&nonce.into(), plaintext).map_err(|e| bad(e.to_string()))?;
    let data = Encrypted {
        kdf: Kdf { name: "scrypt".into(), params: ScryptParams { n: 1 << SCRYPT_LOG_N, r: 8, p: 1 }, salt: salt.to_vec() },
        cipher: Cipher { name: "nacl/secretbox".into(), nonce: nonce.to_vec() },
        ciphertext,
    };
    Ok(serde_json::to_vec(&data).expect("the encrypted key serialises"))
}

/// A private key read from `pem_text` (cosign's encrypted format) with `password`; `what`
/// names the file in errors.
pub fn private_key(pem_text: &str, password: &[u8], what: &str) -> Result<SigningKey, SignError> {
    let bad = |why: String| SignError::BadKey { what: what.to_owned(), why };
    let body = unpem(pem_text, &[PRIVATE_KEY_PEM, "ENCRYPTED SIGSTORE PRIVATE KEY"]).map_err(bad)?;
    let data: Encrypted = serde_json::from_slice(&body).map_err(|e| bad(format!("the encrypted key: {e}")))?;
    if data.kdf.name != "scrypt" || data.cipher.name != "nacl/secretbox" {
        return Err(bad(format!("{} with {}: only scrypt with nacl/secretbox is read", data.kdf.name, data.cipher.name)));
    }
    let n = data.kdf.params.n;
    if !n.is_power_of_two() || !(2..=1 << 20).contains(&n) || data.kdf.params.r > 32 || data.kdf.params.p > 16 {
        return Err(bad("scrypt parameters out of bounds".into()));
    }
    let nonce: [u8; 24] = data.cipher.nonce.as_slice().try_into().map_err(|_| bad("a nonce of other than 24 bytes".into()))?;
    let key = derive_key(password, &data.kdf.salt, n.trailing_zeros() as u8, data.kdf.params.r, data.kdf.params.p).map_err(bad)?;
    let der = XSalsa20Poly1305::new(&key.into())
        .decrypt(&nonce.into(), data.ciphertext.as_slice())
        .map_err(|_| SignError::WrongPassword { what: what.to_owned() })?;
    SigningKey::from_pkcs8_der(&der).map_err(|e| bad(format!("the decrypted key: {e}")))
}

/// A public key read from `pem_text` (PEM `PUBLIC KEY`).
pub fn public_key(pem_text: &str, what: &str) -> Result<VerifyingKey, SignError> {
    VerifyingKey::from_public_key_pem(pem_text.trim()).map_err(|e| SignError::BadKey { what: what.to_owned(), why: e.to_string() })
}

/// The simple-signing payload for the manifest `digest` of an image in `repository`
/// (`HOST/PATH`), as cosign writes it.
pub fn payload(repository: &str, digest: &Digest) -> Vec<u8> {
    let payload = serde_json::json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": digest.to_string() },
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    serde_json::to_vec(&payload).expect("the payload serialises")
}

/// The signature of `payload`, base64 of its DER form (the annotation's value).
pub fn sign(key: &SigningKey, payload: &[u8]) -> String {
    let signature: DerSignature = key.sign(payload);
    BASE64.encode(signature.as_bytes())
}

/// Checks that `signature` (base64 DER) signs `payload` with `key`, and that the payload is
/// for the manifest `digest` in `repository`.
pub fn verify(key: &VerifyingKey, payload: &[u8], signature: &str, repository: &str, digest: &Digest) -> Result<(), SignError> {
    let der = BASE64.decode(signature.trim()).map_err(|_| SignError::BadSignature)?;
    let signature = DerSignature::try_from(der.as_slice()).map_err(|_| SignError::BadSignature)?;
    key.verify(payload, &signature).map_err(|_| SignError::BadSignature)?;
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| SignError::BadPayload(e.to_string()))?;
    let critical = &value["critical"];
    if critical["type"] != "cosign container image signature" {
        return Err(SignError::BadPayload(format!("type {}", critical["type"])));
    }
    let signed_digest = critical["image"]["docker-manifest-digest"].as_str().unwrap_or_default();
    if signed_digest != digest.to_string() {
        return Err(SignError::OtherImage { signed: signed_digest.to_owned(), expected: digest.to_string() });
    }
    let signed_repository = critical["identity"]["docker-reference"].as_str().unwrap_or_default();
    if signed_repository != repository {
        return Err(SignError::OtherImage { signed: signed_repository.to_owned(), expected: repository.to_owned() });
    }
    Ok(())
}

fn pem(label: &str, body: &[u8]) -> String {
    let encoded = BASE64.encode(body);
    let lines: Vec<&str> = encoded.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn unpem(text: &str, labels: &[&str]) -> Result<Vec<u8>, String> {
    for label in labels {
        let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
        if let (Some(start), Some(stop)) = (text.find(&begin), text.find(&end)) {
            if start + begin.len() <= stop {
                let body: String = text[start + begin.len()..stop].split_whitespace().collect();
                return BASE64.decode(body).map_err(|e| format!("PEM body: {e}"));
            }
        }
    }
    Err(format!("no PEM block of type {}", labels.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_and_verify_and_refuse_what_they_should() {
        let (private, public) = generate(b"s3cret").unwrap();
        assert!(private.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = private_key(&private, b"s3cret", "k.key").unwrap();
        assert!(matches!(private_key(&private, b"wrong", "k.key"), Err(SignError::WrongPassword { .. })));
        let verifying = public_key(&public, "k.pub").unwrap();
        let digest = Digest::of(b"manifest");
        let payload = payload("127.0.0.1:5000/app", &digest);
        let signature = sign(&key, &payload);
        verify(&verifying, &payload, &signature, "127.0.0.1:5000/app", &digest).unwrap();
        assert!(matches!(verify(&verifying, &payload, &signature, "127.0.0.1:5000/other", &digest), Err(SignError::OtherImage { .. })));
        assert!(matches!(verify(&verifying, &payload, &signature, "127.0.0.1:5000/app", &Digest::of(b"x")), Err(SignError::OtherImage { .. })));
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert!(matches!(verify(&verifying, &tampered, &signature, "127.0.0.1:5000/app", &digest), Err(SignError::BadSignature)));
        let (_, other_public) = generate(b"").unwrap();
        let other = public_key(&other_public, "o.pub").unwrap();
        assert!(matches!(verify(&other, &payload, &signature, "127.0.0.1:5000/app", &digest), Err(SignError::BadSignature)));
    }
}
