//! Release signatures in the OpenSSF model-signing format (sigstore/model-transparency's
//! `model_signing`, predicate v1.0), so a serving team verifies a release with that project's
//! own tool: `model_signing verify key --signature DIR/model.sig --public_key KEY.pem DIR`.
//!
//! `model.sig` is a Sigstore bundle (v0.3 JSON) holding a DSSE envelope over an in-toto
//! Statement v1. The statement's predicate lists every file of the folder with its sha256
//! (`files` serialization, the signature and git's files left out, no symlinks); its one
//! subject's digest is the sha256 over those digests in sorted path order. The envelope is
//! signed with ECDSA P-256 over SHA-256 (DER), and the bundle names the key by the sha256 of
//! its public PEM, as model_signing 1.1's key signer does.

use facebuild_base::error;

use std::collections::BTreeMap;

use base64::Engine;
use camino::{Utf8Path, Utf8PathBuf};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The signature's name at the folder's root.
pub const SIGNATURE_FILE: &str = "model.sig";
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// What model_signing leaves out of a folder by default: the signature and git's files.
const IGNORED: &[&str] = &[
    SIGNATURE_FILE,
    ".git",
    ".gitattributes",
    ".github",
    ".gitignore",
];

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A P-256 key from PKCS#8 (`openssl genpkey`, `release keygen`) or SEC1
/// (`openssl ecparam -genkey`) PEM: the PEM text itself, or a file holding it.
pub fn signing_key(pem_or_path: &str) -> Result<SigningKey> {
    let (text, from) = if pem_or_path.contains("-----BEGIN") {
        (pem_or_path.to_string(), "the PEM text given".to_string())
    } else {
        let p = Utf8Path::new(pem_or_path.trim());
        (
            std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
            p.to_string(),
        )
    };
    SigningKey::from_pkcs8_pem(&text)
        .or_else(|_| p256::SecretKey::from_sec1_pem(&text).map(SigningKey::from))
        .map_err(|_| {
            Error::usage(format!("{from} is not a P-256 private key in PEM")).with_hint(
                "model_signing verifies NIST curves only: make one with `facebuild release keygen`, or `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`",
            )
        })
}

/// A P-256 public key from a PEM file.
pub fn public_key(path: &Utf8Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|_| {
        Error::usage(format!("{path} is not a P-256 public key in PEM")).with_hint(
            "give the public half of the signing key: `release keygen` writes it beside the private one",
        )
    })
}

/// A new key pair as PEM: (PKCS#8 private key, public key).
pub fn keygen() -> Result<(String, String)> {
    let key = loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // Rejected only when the bytes are 0 or not below the curve's order.
        if let Ok(k) = SigningKey::from_slice(&bytes) {
            break k;
        }
    };
    let private = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
    Ok((private.to_string(), public_pem(key.verifying_key())?))
}

/// The public key as `cryptography` writes it (SubjectPublicKeyInfo PEM), whose sha256 is
/// the bundle's key hint.
fn public_pem(key: &VerifyingKey) -> Result<String> {
    Ok(key
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?)
}

/// The sha256 (hex) of a public key's PEM: how a bundle names its key.
pub fn key_hint(key: &VerifyingKey) -> Result<String> {
    Ok(hex(&Sha256::digest(public_pem(key)?.as_bytes())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// DSSE's pre-authentication encoding of an in-toto payload.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Every file under `dir` by its path relative to `dir` ('/'-separated), with its sha256,
/// model_signing's ignored names at the root left out. A symlink is an error: model_signing
/// refuses them by default.
pub fn files_of(dir: &Utf8Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            let path = Utf8PathBuf::from_path_buf(entry.path())
                .map_err(|p| Error::usage(format!("{} is not UTF-8", p.display())))?;
            let rel = path
                .strip_prefix(dir)
                .map_err(|_| anyhow::anyhow!("{path} is outside {dir}"))?
                .as_str()
                .replace('\\', "/");
            if d == dir && IGNORED.contains(&rel.as_str()) {
                continue;
            }
            let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
            if kind.is_symlink() {
                return Err(Error::usage(format!(
                    "{path} is a symlink: a signed release holds files only"
                )));
            } else if kind.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                out.insert(rel, hex(&Sha256::digest(&bytes)));
            }
        }
    }
    Ok(out)
}

/// The in-toto statement over `files`, for a model called `name`.
fn statement(name: &str, files: &BTreeMap<String, String>) -> Result<serde_json::Value> {
    let mut root = Sha256::new();
    for d in files.values() {
        root.update(bytes_of_hex(d)?);
    }
    let resources: Vec<serde_json::Value> = files
        .iter()
        .map(|(n, d)| serde_json::json!({"name": n, "algorithm": "sha256", "digest": d}))
        .collect();
    Ok(serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": hex(&root.finalize())}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": false,
                "ignore_paths": IGNORED,
            },
            "resources": resources,
        },
    }))
}

fn bytes_of_hex(h: &str) -> Result<Vec<u8>> {
    if !h.len().is_multiple_of(2) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::usage(format!("`{h}` is not a hex digest")));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&h[i..i + 2], 16)
                .map_err(|_| Error::usage(format!("`{h}` is not a hex digest")))
        })
        .collect()
}

/// Sign every file of `dir` (named `name` in the statement): the bundle's JSON, to be
/// written to `dir/model.sig`.
pub fn sign_dir(dir: &Utf8Path, name: &str, key: &SigningKey) -> Result<Vec<u8>> {
    let payload =
        serde_json::to_vec(&statement(name, &files_of(dir)?)?).map_err(anyhow::Error::from)?;
    let sig: Signature = key.sign(&pae(&payload));
    let bundle = serde_json::json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_hint(key.verifying_key())?},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": B64.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": B64.encode(sig.to_der().as_bytes()), "keyid": ""}],
        },
    });
    Ok(serde_json::to_vec_pretty(&bundle).map_err(anyhow::Error::from)?)
}

/// A DSSE envelope (JSON) over an in-toto `statement`, signed with `key` when there is one
/// (no signatures otherwise: an unsigned envelope says so by having none).
pub fn envelope(
    statement: &serde_json::Value,
    key: Option<&SigningKey>,
) -> Result<serde_json::Value> {
    let payload = serde_json::to_vec(statement).map_err(anyhow::Error::from)?;
    let signatures = match key {
        Some(k) => {
            let sig: Signature = k.sign(&pae(&payload));
            vec![serde_json::json!({
                "keyid": key_hint(k.verifying_key())?,
                "sig": B64.encode(sig.to_der().as_bytes()),
            })]
        }
        None => vec![],
    };
    Ok(serde_json::json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": B64.encode(&payload),
        "signatures": signatures,
    }))
}

/// An envelope's statement, and whether `key` signed it: None when it has no signature.
pub fn open_envelope(
    env: &serde_json::Value,
    key: &VerifyingKey,
) -> Result<(serde_json::Value, Option<bool>)> {
    let payload = env["payload"]
        .as_str()
        .and_then(|s| B64.decode(s.as_bytes()).ok())
        .ok_or_else(|| Error::usage("the envelope has no base64 `payload`"))?;
    let statement = serde_json::from_slice(&payload)
        .map_err(|e| Error::usage(format!("the envelope's payload is not JSON: {e}")))?;
    let signed = env["signatures"]
        .as_array()
        .and_then(|s| s.first())
        .map(|s| {
            s["sig"]
                .as_str()
                .and_then(|b| B64.decode(b.as_bytes()).ok())
                .and_then(|der| Signature::from_der(&der).ok())
                .is_some_and(|sig| {
                    env["payloadType"] == PAYLOAD_TYPE && key.verify(&pae(&payload), &sig).is_ok()
                })
        });
    Ok((statement, signed))
}

/// Verify `dir` against its `model.sig` with `key`: what does not verify, in words (the
/// files that changed, appeared or went missing); empty when every file is as signed.
/// An unreadable or malformed signature is an error.
pub fn verify_dir(dir: &Utf8Path, key: &VerifyingKey) -> Result<Vec<String>> {
    let sig_path = dir.join(SIGNATURE_FILE);
    let text = std::fs::read(&sig_path).map_err(|e| Error::io(&sig_path, e))?;
    let bundle: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::usage(format!("{sig_path} is not JSON: {e}")))?;
    let field = |v: &serde_json::Value, path: &[&str]| -> Result<String> {
        let mut cur = v;
        for k in path {
            cur = &cur[*k];
        }
        cur.as_str()
            .map(String::from)
            .ok_or_else(|| Error::usage(format!("{sig_path} has no `{}`", path.join("."))))
    };
    if field(&bundle, &["mediaType"])? != BUNDLE_MEDIA_TYPE {
        return Err(Error::usage(format!(
            "{sig_path} is not a Sigstore bundle v0.3"
        )));
    }
    let mut problems = Vec::new();
    if let Ok(hint) = field(&bundle, &["verificationMaterial", "publicKey", "hint"])
        && hint != key_hint(key)?
    {
        problems.push(format!(
            "{SIGNATURE_FILE} was signed by another key (its key's sha256 is {hint})"
        ));
        return Ok(problems);
    }
    let env = &bundle["dsseEnvelope"];
    let decode = |s: String| {
        B64.decode(s.as_bytes())
            .map_err(|e| Error::usage(format!("{sig_path}: bad base64: {e}")))
    };
    let payload = decode(field(env, &["payload"])?)?;
    let sig = env["signatures"]
        .get(0)
        .and_then(|s| s["sig"].as_str())
        .ok_or_else(|| Error::usage(format!("{sig_path} has no signature")))?;
    let sig = Signature::from_der(&decode(sig.to_string())?)
        .map_err(|_| Error::usage(format!("{sig_path}: the signature is not ECDSA DER")))?;
    if field(env, &["payloadType"])? != PAYLOAD_TYPE || key.verify(&pae(&payload), &sig).is_err() {
        problems.push(format!(
            "{SIGNATURE_FILE}'s signature does not verify with this key"
        ));
        return Ok(problems);
    }
    let statement: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| Error::usage(format!("{sig_path}: the statement is not JSON: {e}")))?;
    let signed: BTreeMap<String, String> = statement["predicate"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["name"].as_str()?.into(), r["digest"].as_str()?.into())))
        .collect();
    // As model_signing checks it: the subject's digest is the sha256 over the resources'.
    let mut root = Sha256::new();
    for r in statement["predicate"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
    {
        root.update(bytes_of_hex(r["digest"].as_str().unwrap_or_default())?);
    }
    if statement["predicateType"] != PREDICATE_TYPE
        || statement["subject"][0]["digest"]["sha256"].as_str() != Some(&hex(&root.finalize()))
    {
        problems.push(format!(
            "{SIGNATURE_FILE}'s statement is not a model_signing v1.0 statement of its resources"
        ));
    }
    let actual = files_of(dir)?;
    for (f, d) in &actual {
        match signed.get(f) {
            None => problems.push(format!("`{f}` is not signed (added after signing)")),
            Some(s) if s != d => problems.push(format!("`{f}` changed since it was signed")),
            Some(_) => {}
        }
    }
    for f in signed.keys().filter(|f| !actual.contains_key(*f)) {
        problems.push(format!("`{f}` is signed but missing"));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_folder_verifies_and_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let d = Utf8Path::from_path(dir.path()).unwrap();
        std::fs::create_dir(d.join("ir")).unwrap();
        std::fs::write(d.join("ir/model.xml"), b"<xml/>").unwrap();
        std::fs::write(d.join("SHA256SUMS"), b"sums").unwrap();
        let (private, public) = keygen().unwrap();
        let key = signing_key(&private).unwrap();
        std::fs::write(d.join(SIGNATURE_FILE), sign_dir(d, "v1", &key).unwrap()).unwrap();
        let pub_path = d
            .parent()
            .unwrap()
            .join(format!("{}.pub.pem", d.file_name().unwrap()));
        std::fs::write(&pub_path, &public).unwrap();
        let vk = public_key(&pub_path).unwrap();
        assert_eq!(verify_dir(d, &vk).unwrap(), Vec::<String>::new());

        std::fs::write(d.join("ir/model.xml"), b"<xmm/>").unwrap();
        std::fs::write(d.join("extra"), b"x").unwrap();
        let p = verify_dir(d, &vk).unwrap();
        assert!(
            p.iter().any(|m| m.contains("`ir/model.xml` changed")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("`extra` is not signed")),
            "{p:?}"
        );

        let (other, _) = keygen().unwrap();
        let other = signing_key(&other).unwrap();
        let p = verify_dir(d, other.verifying_key()).unwrap();
        assert!(p[0].contains("another key"), "{p:?}");
        let _ = std::fs::remove_file(pub_path);
    }

    #[test]
    fn keys_that_are_not_p256_pem_are_refused_with_how_to_make_one() {
        let e = signing_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a P-256 private key") && e.contains("keygen"),
            "{e}"
        );
    }
}
