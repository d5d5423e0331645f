//! `strata login` and `strata logout`: credentials checked with the registry and stored where
//! podman stores them (containers-auth.json(5)), for every later command to find
//! (strata-transport's `credentials`, which does the reading and the writing).

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};
use strata_oci::reference::LoginScope;
use strata_transport::credentials::{forget, login_file, store, Credentials};
use strata_transport::registry::login as check_login;
use strata_transport::Transport;

use crate::cli::{LoginArgs, LogoutArgs};

pub fn login(args: LoginArgs, cx: &Transport) -> Result<()> {
    let scope = LoginScope::parse(&args.registry)?;
    let file = args.authfile.unwrap_or_else(login_file);
    let creds = match cx.registry.creds.clone() {
        Some(creds) if args.username.is_none() && args.password.is_none() && !args.password_stdin => creds,
        _ => Credentials::new(username(args.username)?, password(args.password, args.password_stdin)?),
    };
    check_login(&scope.host, creds.clone(), &cx.registry).with_context(|| format!("logging in to {scope}"))?;
    store(&file, &scope.to_string(), &creds)?;
    println!("Login Succeeded!");
    Ok(())
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let file = args.authfile.unwrap_or_else(login_file);
    let scope = args.registry.as_deref().map(LoginScope::parse).transpose()?;
    let key = scope.as_ref().map(ToString::to_string);
    match (forget(&file, key.as_deref())?, key) {
        (0, Some(key)) => bail!("not logged in to {key} (in {})", file.display()),
        (_, Some(key)) => println!("Removed login credentials for {key}"),
        (n, None) => println!("Removed login credentials for {n} registries"),
    }
    Ok(())
}

/// `-u`'s, else asked on the terminal.
fn username(given: Option<String>) -> Result<String> {
    if let Some(user) = given {
        return Ok(user);
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        bail!("no user name: give -u USER (or --creds USER:PASSWORD)");
    }
    eprint!("Username: ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the user name")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// `--password-stdin`'s first line, else `-p`'s, else asked on the terminal.
fn password(given: Option<String>, from_stdin: bool) -> Result<String> {
    if from_stdin {
        let text = strata_oci::bounded::read_bounded(std::io::stdin().lock(), 64 << 10).context("reading the password from standard input")?;
        let text = String::from_utf8(text).context("the password on standard input is not UTF-8")?;
        return Ok(text.lines().next().unwrap_or_default().to_owned());
    }
    if let Some(password) = given {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: give --password-stdin (or -p PASSWORD)");
    }
    rpassword::prompt_password("Password: ").context("reading the password")
}
