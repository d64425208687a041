//! Origin URLs: which forms mesh-agent hands to git, and how they are printed.
//!
//! Accepted: `ssh://[user@]host[:port]/path`, scp-like `[user@]host:path`,
//! `https://[user[:password]@]host[:port]/path`, `http://…` (meant for tests on loopback),
//! `git://host[:port]/path`, `file:///path` and local paths. Anything else — other
//! schemes, git's `<transport>::<address>` remote helpers (`ext::` runs a command), an
//! argument starting with `-`, whitespace or control characters — is refused with a
//! message listing the accepted forms.
//!
//! A password in an https URL never reaches git's command line, its config or a log: it
//! is taken out of the URL ([`RemoteUrl::password`]) and handed to git through the
//! credential helper like a token (see [`super::Credentials`]). [`redact`] hides the
//! userinfo password of any URL in a text before it is printed.

use std::fmt;

/// A secret (a token or a password): printed as `***`, readable only on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing it to git's credential helper (never to a log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How git reaches the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ssh://…` or scp-like `user@host:path`.
    Ssh,
    Https,
    /// Plain http: no transport security, for tests on loopback.
    Http,
    /// `git://`: read-only on most servers and unauthenticated.
    Git,
    /// `file://` or a local path.
    Local,
}

/// A parsed origin URL, without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    transport: Transport,
    /// What git is given: the URL as written, minus any password.
    url: String,
    /// The user name in the URL, if any.
    user: Option<String>,
    /// The password that was in the URL, if any (moved to the credential helper).
    password: Option<Secret>,
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteUrl")
            .field("transport", &self.transport)
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Why a URL was refused (the error adds the URL, redacted, and the accepted forms).
pub type UrlProblem = &'static str;

impl RemoteUrl {
    /// Parses an origin as git users write it (see the module doc).
    pub fn parse(input: &str) -> Result<RemoteUrl, UrlProblem> {
        if input.is_empty() {
            return Err("it is empty");
        }
        if input.starts_with('-') {
            return Err("it starts with `-` (git would read it as an option)");
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("it contains whitespace or control characters");
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "ssh" | "git+ssh" | "ssh+git" => parse_authority(Transport::Ssh, scheme, rest),
                "https" => parse_authority(Transport::Https, scheme, rest),
                "http" => parse_authority(Transport::Http, scheme, rest),
                "git" => parse_authority(Transport::Git, scheme, rest),
                "file" => {
                    if rest.is_empty() || !rest.starts_with('/') {
                        return Err("a file:// URL needs an absolute path (file:///path/repo.git)");
                    }
                    Ok(RemoteUrl::plain(Transport::Local, input))
                }
                _ => Err("its scheme is not one git can be trusted with here"),
            };
        }
        let first_slash = input.find('/').unwrap_or(input.len());
        if input[..first_slash].contains("::") {
            return Err("git's `<transport>::<address>` remote helpers are not accepted");
        }
        match input[..first_slash].find(':') {
            // scp-like: `[user@]host:path`, the colon before any slash.
            Some(colon) => {
                let (userhost, path) = (&input[..colon], &input[colon + 1..]);
                if path.is_empty() {
                    return Err("the scp-like form needs a path after `:` (user@host:repo.git)");
                }
                let (user, host) = match userhost.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, userhost),
                };
                if host.is_empty() {
                    return Err("it has no host");
                }
                if user.is_some_and(|u| u.is_empty() || u.contains(':')) {
                    return Err("its user name is empty or holds a password (ssh takes keys, not passwords in URLs)");
                }
                Ok(RemoteUrl {
                    transport: Transport::Ssh,
                    url: input.to_string(),
                    user: user.map(str::to_string),
                    password: None,
                })
            }
            None => Ok(RemoteUrl::plain(Transport::Local, input)),
        }
    }

    fn plain(transport: Transport, url: &str) -> RemoteUrl {
        RemoteUrl {
            transport,
            url: url.to_string(),
            user: None,
            password: None,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The URL handed to git (never holds a password).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The user name written in the URL, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password that was written in the URL, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Whether the origin is on this machine (a path or `file://`).
    pub fn is_local(&self) -> bool {
        self.transport == Transport::Local
    }

    /// The repository this URL names, written the same way whichever form reached it:
    /// `host[:port]/path`, the host in lower case, no user, no scheme, the transport's
    /// default port dropped, `//` collapsed and a trailing `/` or `.git` removed. So
    /// `git@github.com:team/repo.git`, `ssh://git@GitHub.com/team/repo` and
    /// `https://github.com/team/repo.git` are one repository. Nodes name their merge
    /// gate after it; a local origin has none.
    pub fn repository(&self) -> Option<String> {
        let (host, port, path) = match self.transport {
            Transport::Local => return None,
            _ if self.url.contains("://") => {
                let rest = self.url.split_once("://").map_or("", |(_, r)| r);
                let slash = rest.find('/').unwrap_or(rest.len());
                let hostport = rest[..slash]
                    .rsplit_once('@')
                    .map_or(&rest[..slash], |(_, h)| h);
                let (host, port) = match hostport.strip_prefix('[') {
                    Some(inner) => match inner.split_once(']') {
                        Some((h, p)) => (h, p.strip_prefix(':')),
                        None => (inner, None),
                    },
                    None => match hostport.split_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (hostport, None),
                    },
                };
                (host, port, &rest[slash..])
            }
            _ => {
                // scp-like `[user@]host:path`: the path is relative to the login's home
                // unless it starts with `/`, as on GitHub (`git@github.com:team/repo`).
                let (userhost, path) = self.url.split_once(':').unwrap_or((&self.url, ""));
                let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
                (host, None, path)
            }
        };
        let default_port = match self.transport {
            Transport::Ssh => "22",
            Transport::Https => "443",
            Transport::Http => "80",
            Transport::Git => "9418",
            Transport::Local => "",
        };
        let mut name = host.to_ascii_lowercase();
        if host.contains(':') {
            name = format!("[{name}]");
        }
        if let Some(port) = port.filter(|p| p.trim_start_matches('0') != default_port) {
            name.push(':');
            name.push_str(port.trim_start_matches('0'));
        }
        let mut path: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if let Some(last) = path.last_mut() {
            *last = last.strip_suffix(".git").unwrap_or(last);
        }
        for part in path.into_iter().filter(|p| !p.is_empty()) {
            name.push('/');
            name.push_str(part);
        }
        Some(name)
    }
}

/// `scheme://[user[:password]@]host[:port]/path` → the URL without the password.
fn parse_authority(
    transport: Transport,
    scheme: &str,
    rest: &str,
) -> Result<RemoteUrl, UrlProblem> {
    let slash = rest.find('/').ok_or("it has no path after the host")?;
    let (authority, path) = (&rest[..slash], &rest[slash..]);
    if path.len() < 2 {
        return Err("it has no path after the host");
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let end = inner.find(']').ok_or("its IPv6 host has no closing `]`")?;
        (&inner[..end], inner[end + 1..].strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host");
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("its port is not a number between 1 and 65535");
        }
    }
    let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        None => (None, None),
        Some(("", _)) => return Err("its user name is empty"),
        Some((user, "")) => (Some(user.to_string()), None),
        Some((user, password)) => (Some(user.to_string()), Some(Secret::new(password))),
    };
    match transport {
        Transport::Ssh if password.is_some() => return Err(
            "it holds a password; ssh origins authenticate with keys (ssh-agent, ~/.ssh/config)",
        ),
        Transport::Git if user.is_some() => {
            return Err("git:// takes no user name (it is unauthenticated)")
        }
        _ => {}
    }
    let userpart = user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
    Ok(RemoteUrl {
        transport,
        url: format!("{scheme}://{userpart}{hostport}{path}"),
        user,
        password,
    })
}

/// `text` with the password of every `scheme://user:password@` URL in it replaced by
/// `***`, and every given secret too: for error messages and logs.
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                out.push_str(&format!("{user}:***@{host}"));
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    for secret in secrets {
        if !secret.expose().is_empty() {
            out = out.replace(secret.expose(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> RemoteUrl {
        RemoteUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    #[test]
    fn every_way_of_writing_one_repository_names_it_alike() {
        for input in [
            "git@github.com:team/repo.git",
            "git@github.com:team/repo",
            "github.com:/team/repo.git/",
            "ssh://git@GitHub.com/team/repo",
            "ssh://git@github.com:22/team//repo.git",
            "git+ssh://other@github.com/team/repo.git",
            "https://github.com/team/repo.git",
            "https://bot:s3cret@github.com:443/team/repo",
            "git://github.com/team/repo.git",
        ] {
            assert_eq!(
                ok(input).repository().as_deref(),
                Some("github.com/team/repo"),
                "{input}"
            );
        }
        // Another port or another path is another repository, as far as the URL says.
        assert_eq!(
            ok("ssh://git@example.org:2222/srv/r.git")
                .repository()
                .as_deref(),
            Some("example.org:2222/srv/r")
        );
        assert_eq!(
            ok("http://127.0.0.1:8080/git/r.git")
                .repository()
                .as_deref(),
            Some("127.0.0.1:8080/git/r")
        );
        assert_eq!(
            ok("ssh://[::1]:22/srv/r.git").repository().as_deref(),
            Some("[::1]/srv/r")
        );
        assert_ne!(
            ok("git@h:a/r.git").repository(),
            ok("git@h:b/r.git").repository()
        );
        assert_eq!(ok("/srv/r.git").repository(), None);
        assert_eq!(ok("file:///srv/r.git").repository(), None);
    }

    #[test]
    fn every_form_git_users_write_is_accepted_with_its_transport() {
        for (input, transport) in [
            ("ssh://git@example.org/team/repo.git", Transport::Ssh),
            ("ssh://git@example.org:2222/team/repo.git", Transport::Ssh),
            ("ssh://[::1]:22/srv/repo.git", Transport::Ssh),
            ("git@github.com:team/repo.git", Transport::Ssh),
            ("host:repo.git", Transport::Ssh),
            ("https://example.org/team/repo.git", Transport::Https),
            (
                "https://bot@example.org:8443/team/repo.git",
                Transport::Https,
            ),
            ("http://127.0.0.1:8080/git/repo.git", Transport::Http),
            ("git://example.org/repo.git", Transport::Git),
            ("file:///srv/repo.git", Transport::Local),
            ("/srv/repo.git", Transport::Local),
            ("./repo.git", Transport::Local),
            ("repo.git", Transport::Local),
        ] {
            let url = ok(input);
            assert_eq!(url.transport(), transport, "{input}");
            assert_eq!(url.as_str(), input, "{input}");
            assert_eq!(url.is_local(), transport == Transport::Local, "{input}");
        }
        assert_eq!(ok("git@github.com:team/repo.git").user(), Some("git"));
    }

    #[test]
    fn a_password_in_an_https_url_is_taken_out_of_what_git_sees() {
        let url = ok("https://bot:hunter2@example.org/team/repo.git");
        assert_eq!(url.as_str(), "https://bot@example.org/team/repo.git");
        assert_eq!(url.user(), Some("bot"));
        assert_eq!(url.password().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }

    #[test]
    fn unusable_urls_are_refused_with_a_reason() {
        for (input, why) in [
            ("", "empty"),
            ("-uhack", "option"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh", "remote helpers"),
            ("ftp://example.org/repo.git", "scheme"),
            ("ssh://example.org", "no path"),
            ("ssh://:22/repo.git", "no host"),
            ("ssh://git:pw@example.org/repo.git", "password"),
            ("ssh://example.org:99999/repo.git", "port"),
            ("ssh://example.org:0/repo.git", "port"),
            ("https://:pw@example.org/r.git", "user name is empty"),
            ("git://me@example.org/repo.git", "user name"),
            ("file://relative/repo.git", "absolute"),
            ("host:", "needs a path"),
            ("https://[::1/repo.git", "closing"),
        ] {
            let err = RemoteUrl::parse(input).expect_err(input);
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }

    #[test]
    fn redaction_hides_url_passwords_and_given_secrets_only() {
        let token = Secret::new("tok-123");
        let text = "fatal: unable to access 'https://bot:pa55@example.org/r.git/': 401; \
                    also http://u:tok-123@h:8080/x and ssh://git@h/r.git and tok-123";
        let red = redact(text, &[&token]);
        assert!(!red.contains("pa55") && !red.contains("tok-123"), "{red}");
        assert!(
            red.contains("'https://bot:***@example.org/r.git/'"),
            "{red}"
        );
        assert!(red.contains("http://u:***@h:8080/x"), "{red}");
        assert!(red.contains("ssh://git@h/r.git"), "{red}");
        assert_eq!(redact("no urls here", &[]), "no urls here");
        assert_eq!(format!("{token:?}"), "Secret(***)");
    }
}
