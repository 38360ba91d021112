//! Key-pair authentication: the RS256 JWT Snowflake accepts as `AUTHENTICATOR=SNOWFLAKE_JWT`.
//!
//! Claims, as Snowflake's drivers build them:
//! - `iss` = `<ACCOUNT>.<USER>.SHA256:<base64 of SHA-256 of the DER public key (SPKI)>`
//! - `sub` = `<ACCOUNT>.<USER>`
//! - `iat` = now, `exp` = now + 59 minutes (Snowflake refuses more than one hour).
//!
//! `ACCOUNT` is the account identifier upper-cased, cut at the first `.` (region and cloud
//! suffixes are not part of it); for a `.global` identifier, cut at the first `-`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Error;

/// Lifetime of each JWT.
const JWT_LIFETIME: Duration = Duration::from_secs(59 * 60);

/// Signs login JWTs; built once from the PEM so a bad key fails at connect time.
#[derive(Clone)]
pub(crate) struct KeyPairSigner {
    key: EncodingKey,
    /// `<ACCOUNT>.<USER>`.
    subject: String,
    /// `SHA256:<base64>`.
    fingerprint: String,
}

impl fmt::Debug for KeyPairSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPairSigner")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
}

impl KeyPairSigner {
    pub(crate) fn new(account: &str, user: &str, private_key_pem: &str) -> Result<Self, Error> {
        let pem = private_key_pem.trim();
        if pem.contains("ENCRYPTED PRIVATE KEY") || pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(Error::Config(
                "encrypted private keys are not supported: decrypt the key first \
                 (openssl pkcs8 -in key.p8 -nocrypt -out key.pem)"
                    .into(),
            ));
        }
        let private = if pem.contains("BEGIN RSA PRIVATE KEY") {
            RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| Error::Config(format!("cannot read PKCS#1 RSA private key: {e}")))?
        } else {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| {
                Error::Config(format!("cannot read PKCS#8 RSA private key (PEM): {e}"))
            })?
        };
        let public_der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| Error::Config(format!("cannot encode the public key: {e}")))?;
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(public_der.as_bytes()))
        );
        let pkcs1 = private
            .to_pkcs1_der()
            .map_err(|e| Error::Config(format!("cannot encode the private key: {e}")))?;
        let key = EncodingKey::from_rsa_der(pkcs1.as_bytes());
        let subject = format!("{}.{}", jwt_account(account), user.to_uppercase());
        Ok(KeyPairSigner {
            key,
            subject,
            fingerprint,
        })
    }

    /// The claims of a JWT issued at `now`.
    pub(crate) fn claims(&self, now: SystemTime) -> Claims {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        Claims {
            iss: format!("{}.{}", self.subject, self.fingerprint),
            sub: self.subject.clone(),
            iat,
            exp: iat + JWT_LIFETIME.as_secs(),
        }
    }

    /// A fresh signed JWT.
    pub(crate) fn token(&self, now: SystemTime) -> Result<String, Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &self.claims(now), &self.key)
            .map_err(|e| Error::Config(format!("cannot sign the login JWT: {e}")))
    }
}

/// The account part of the JWT subject.
fn jwt_account(account: &str) -> String {
    let account = if account.contains(".global") {
        account.split('-').next().unwrap_or(account)
    } else {
        account.split('.').next().unwrap_or(account)
    };
    account.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    // A throw-away 2048-bit RSA key made for these tests only; the fingerprint was computed
    // independently with `openssl rsa -pubout -outform DER | openssl dgst -sha256 -binary | base64`.
    const KEY_PKCS8: &str = include_str!("../testdata/jwt_test_key.p8");
    const KEY_PKCS1: &str = include_str!("../testdata/jwt_test_key_pkcs1.pem");
    const PUBLIC_PEM: &str = include_str!("../testdata/jwt_test_key.pub.pem");
    const FINGERPRINT: &str = "SHA256:QzOqhN9HbRC+D0Eywz8fDZgaNpRAMKIg6waQuteFXEg=";

    #[test]
    fn claims_follow_snowflake_rules() {
        let signer = KeyPairSigner::new("myorg-acct.us-east-1.aws", "etl_user", KEY_PKCS8).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let claims = signer.claims(now);
        assert_eq!(claims.sub, "MYORG-ACCT.ETL_USER");
        assert_eq!(claims.iss, format!("MYORG-ACCT.ETL_USER.{FINGERPRINT}"));
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.exp, 1_700_000_000 + 59 * 60);
    }

    #[test]
    fn token_verifies_with_the_public_key() {
        let signer = KeyPairSigner::new("xy12345", "me", KEY_PKCS8).unwrap();
        let token = signer.token(SystemTime::now()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        let key = DecodingKey::from_rsa_pem(PUBLIC_PEM.as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let decoded = jsonwebtoken::decode::<Claims>(&token, &key, &validation).unwrap();
        assert_eq!(decoded.claims.sub, "XY12345.ME");
        assert_eq!(decoded.claims.iss, format!("XY12345.ME.{FINGERPRINT}"));

        // A token signed by another key does not verify: the check above can fail.
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(jsonwebtoken::decode::<Claims>(&tampered, &key, &validation).is_err());
    }

    #[test]
    fn pkcs1_key_gives_the_same_fingerprint() {
        let signer = KeyPairSigner::new("a", "u", KEY_PKCS1).unwrap();
        assert_eq!(signer.fingerprint, FINGERPRINT);
    }

    #[test]
    fn global_account_and_bad_keys() {
        assert_eq!(jwt_account("myacct-12345.global"), "MYACCT");
        assert_eq!(jwt_account("xy12345.eu-central-1"), "XY12345");
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----";
        let err = KeyPairSigner::new("a", "u", encrypted).unwrap_err();
        assert!(
            err.to_string()
                .contains("encrypted private keys are not supported")
        );
        let err = KeyPairSigner::new("a", "u", "not a key").unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }
}
