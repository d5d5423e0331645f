//! `strata key generate`, `strata verify`, and `--sign-key` on pushes: signatures as cosign
//! makes and stores them (strata-sign makes them, strata-transport stores them), which podman
//! verifies with a `sigstoreSigned` policy.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use strata_oci::digest::Digest;
use strata_oci::reference::{ImageRef, RegistryRef};
use strata_transport::registry::{manifest_of, push_signature, signatures, RegistryOptions, StoredSignature};
use strata_transport::Transport;

use crate::cli::VerifyArgs;

/// The key's password: `$COSIGN_PASSWORD` (empty allowed), as cosign reads it; else asked on
/// the terminal (twice for a new key); with neither, an error rather than a wait.
fn password(what: &str, confirm: bool) -> Result<Vec<u8>> {
    if let Some(password) = std::env::var_os("COSIGN_PASSWORD") {
        return Ok(password.into_encoded_bytes());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what} needs a password: set COSIGN_PASSWORD (it may be empty), or run strata on a terminal");
    }
    let first = rpassword::prompt_password(format!("Password for {what}: ")).context("reading the password")?;
    if confirm && rpassword::prompt_password("Again: ").context("reading the password")? != first {
        bail!("the passwords differ");
    }
    Ok(first.into_bytes())
}

/// A key file's text (cosign's PEM: a few hundred bytes; 64 KiB at most).
fn read_key(path: &Path) -> Result<String> {
    strata_oci::bounded::read_text(path, 64 << 10).with_context(|| format!("reading {}", path.display()))
}

/// Writes `NAME.key` (mode 0600) and `NAME.pub`, refusing to replace either.
pub fn generate(name: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    if name.file_name().is_none() || name.as_os_str().as_bytes().ends_with(b"/") {
        bail!("{}: a key pair's name ends in a file name (NAME gives NAME.key and NAME.pub)", name.display());
    }
    let with = |ending: &str| {
        let mut path = name.as_os_str().to_owned();
        path.push(ending);
        PathBuf::from(path)
    };
    let (private_path, public_path) = (with(".key"), with(".pub"));
    for path in [&private_path, &public_path] {
        if path.exists() {
            bail!("{} exists already: strata does not replace keys", path.display());
        }
    }
    let (private, public) = strata_sign::generate(&password(&private_path.display().to_string(), true)?)?;
    write_new(&private_path, private.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    eprintln!("strata: wrote {} and {}", private_path.display(), public_path.display());
    Ok(())
}

/// Writes `bytes` to `path` whole or not at all (a scratch file, then a hard link, which
/// fails if `path` exists: a key is never replaced, even by a writer racing this one).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = strata_scratch::ScratchFile::beside(path).with_context(|| format!("creating {}", path.display()))?;
    let mut file = scratch.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(mode)).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    match std::fs::hard_link(scratch.path(), path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{} exists already: strata does not replace keys", path.display()),
        other => other.with_context(|| format!("writing {}", path.display())),
    }
}

/// A signing key read (its password asked) before any work, for a push to `dest`.
pub struct Signer {
    key: strata_sign::SigningKey,
}

impl Signer {
    pub fn load(path: &Path, dest: &ImageRef) -> Result<Signer> {
        if !matches!(dest, ImageRef::Registry(_)) {
            bail!("--sign-key signs what is pushed to a registry (docker://…), not {dest}");
        }
        let text = read_key(path)?;
        let what = path.display().to_string();
        Ok(Signer { key: strata_sign::private_key(&text, &password(&what, false)?, &what)? })
    }

    /// Signs the manifest `digest` pushed to `dest` and stores the signature beside it.
    pub fn sign(&self, dest: &ImageRef, digest: &Digest, cx: &Transport) -> Result<()> {
        let ImageRef::Registry(reference) = dest else { unreachable!("checked in load") };
        let payload = strata_sign::payload(&repository(reference), digest);
        let signature = strata_sign::sign(&self.key, &payload);
        push_signature(reference, digest, StoredSignature { payload, signature }, &cx.registry)
            .with_context(|| format!("storing the signature of {digest}"))?;
        eprintln!("strata: signed {digest} in {}", repository(reference));
        Ok(())
    }
}

/// `HOST/REPOSITORY`: what a signature names (cosign's `docker-reference`).
fn repository(reference: &RegistryRef) -> String {
    format!("{}/{}", reference.host, reference.repository)
}

/// A public key the user trusts (`strata verify --key`, `--previous-key`), read before any
/// work.
pub struct TrustedKey {
    key: strata_sign::VerifyingKey,
    pub path: PathBuf,
}

impl TrustedKey {
    pub fn load(path: &Path) -> Result<TrustedKey> {
        let key = strata_sign::public_key(&read_key(path)?, &path.display().to_string())?;
        Ok(TrustedKey { key, path: path.to_owned() })
    }

    /// The manifest digest `reference` names (its tag read once), if one of the signatures
    /// stored beside it verifies with this key; an error saying why not otherwise. What
    /// is used of a signed image must be read by this digest, never by the tag again.
    pub fn signed_digest(&self, reference: &RegistryRef, registry: &RegistryOptions) -> Result<Digest> {
        let (digest, _) = manifest_of(reference, registry).with_context(|| format!("reading {reference}"))?;
        let stored = signatures(reference, &digest, registry).with_context(|| format!("reading the signatures of {reference}"))?;
        if stored.is_empty() {
            bail!("{reference}: no signature for {digest}");
        }
        let reasons: Vec<String> = stored
            .iter()
            .map(|s| strata_sign::verify(&self.key, &s.payload, &s.signature, &repository(reference), &digest))
            .filter_map(|verified| verified.err().map(|e| e.to_string()))
            .collect();
        if reasons.len() == stored.len() {
            bail!("{reference}: no valid signature for {digest} with {}: {}", self.path.display(), reasons.join("; "));
        }
        Ok(digest)
    }
}

/// `strata verify`.
pub fn verify(args: VerifyArgs, cx: &Transport) -> Result<()> {
    let ImageRef::Registry(reference) = args.image.parse()? else { bail!("{}: signatures are verified in registries (docker://…)", args.image) };
    let digest = TrustedKey::load(&args.key)?.signed_digest(&reference, &cx.registry)?;
    println!("{}: {digest} signed by {}", args.image, args.key.display());
    Ok(())
}
