//! The GitHub App manifest flow, GitHub's side of it: where the "create app"
//! page lives (github.com, an organization, or a GitHub Enterprise Server),
//! the manifest that describes the App the relay needs, and the one call that
//! turns the one-time code GitHub hands back into the new App's id and
//! private key (`POST /app-manifests/{code}/conversions`).
//!
//! Everything here except [`convert`] is a pure function, so the URLs and the
//! manifest are unit-tested without a network.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{GitHubClient, TransportError};
use crate::secret::Secret;

/// The repository permissions the App asks for, as GitHub names them, with
/// what each one is for. Contents write sends `repository_dispatch`; Actions
/// write starts `workflow_dispatch` runs; Metadata read is required by GitHub
/// for every App that has any repository permission.
pub const PERMISSIONS: [(&str, &str, &str); 3] = [
    ("contents", "write", "send repository_dispatch events"),
    ("actions", "write", "start workflow_dispatch runs"),
    ("metadata", "read", "required by GitHub for every App"),
];

/// Characters left as they are in a path segment: the code GitHub sends is
/// alphanumeric, and anything else is encoded so that a forged callback
/// cannot steer the request to another path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// The web address that belongs to an API base URL.
///
/// `https://api.github.com` becomes `https://github.com`, a GitHub
/// Enterprise Cloud data-residency host `https://api.SUB.ghe.com` becomes
/// `https://SUB.ghe.com`, and a GitHub Enterprise Server's
/// `https://HOST/api/v3` becomes `https://HOST`. Anything else (a test
/// server, a proxy) is kept as it is, without a trailing slash.
pub fn web_url(api_url: &str) -> String {
    let trimmed = api_url.trim_end_matches('/');
    let Ok(mut url) = url::Url::parse(trimmed) else {
        return trimmed.to_owned();
    };
    if let Some(rest) = url.host_str().and_then(|h| h.strip_prefix("api.")) {
        let rest = rest.to_owned();
        if url.set_host(Some(&rest)).is_ok() {
            url.set_path("");
        }
    } else if let Some(base) = url.path().trim_end_matches('/').strip_suffix("/api/v3") {
        let base = base.to_owned();
        url.set_path(&base);
    }
    url.as_str().trim_end_matches('/').to_owned()
}

/// The "create app" page the manifest form is posted to, for the user's own
/// account or for an organization, carrying `state` in its query as GitHub
/// documents.
pub fn create_app_url(web_url: &str, org: Option<&str>, state: &str) -> String {
    let web = web_url.trim_end_matches('/');
    let state = utf8_percent_encode(state, PATH_SEGMENT);
    match org {
        Some(org) => {
            let org = utf8_percent_encode(org, PATH_SEGMENT);
            format!("{web}/organizations/{org}/settings/apps/new?state={state}")
        }
        None => format!("{web}/settings/apps/new?state={state}"),
    }
}

/// The settings page of an App, where a new private key can be generated.
pub fn app_settings_url(web_url: &str, org: Option<&str>, slug: &str) -> String {
    let web = web_url.trim_end_matches('/');
    let slug = utf8_percent_encode(slug, PATH_SEGMENT);
    match org {
        Some(org) => {
            let org = utf8_percent_encode(org, PATH_SEGMENT);
            format!("{web}/organizations/{org}/settings/apps/{slug}")
        }
        None => format!("{web}/settings/apps/{slug}"),
    }
}

/// Whether `org` could be a GitHub organization login: letters, digits and
/// single hyphens, not at either end, at most 39 characters.
pub fn is_valid_org(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= 39
        && org.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !org.starts_with('-')
        && !org.ends_with('-')
        && !org.contains("--")
}

/// The manifest of the App: private, the repository permissions in
/// [`PERMISSIONS`], no webhook (the relay never receives GitHub events) and
/// no events. GitHub lets the user edit the name on its page before creating.
pub fn manifest(name: &str, homepage: &str, redirect_url: &str) -> Value {
    let permissions: serde_json::Map<String, Value> = PERMISSIONS
        .iter()
        .map(|(name, level, _)| ((*name).to_owned(), json!(level)))
        .collect();
    json!({
        "name": name,
        "url": homepage,
        "description": "Sends repository_dispatch and workflow_dispatch events for dispatch-relay.",
        "public": false,
        "default_permissions": permissions,
        "default_events": [],
        "redirect_url": redirect_url,
        "request_oauth_on_install": false,
        "setup_on_update": false,
    })
}

/// The App GitHub created. The client secret and webhook secret GitHub also
/// returns are not kept: the relay never uses them.
#[derive(Debug)]
pub struct CreatedApp {
    pub id: u64,
    pub slug: String,
    pub name: String,
    /// The App's public page; `{html_url}/installations/new` installs it.
    pub html_url: String,
    /// The PEM private key, a secret.
    pub pem: Secret,
}

impl CreatedApp {
    /// The page where the App is installed on repositories.
    pub fn install_url(&self) -> String {
        format!("{}/installations/new", self.html_url.trim_end_matches('/'))
    }
}

/// Why the one-time code did not become an App.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error(
        "GitHub does not know this code (404): it was already used, or it is more than an hour old"
    )]
    UnknownCode,
    #[error(
        "the callback's code is not one GitHub gives (letters and digits): the address was changed on its way back"
    )]
    NotACode,
    #[error("GitHub refused the code ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("GitHub's answer does not describe an App: {0}")]
    BadAnswer(String),
}

/// Only the fields the relay keeps; serde skips the rest, so the client
/// secret and webhook secret are never held.
#[derive(Deserialize)]
struct Conversion {
    id: u64,
    slug: Option<String>,
    name: String,
    html_url: String,
    pem: String,
}

/// Exchanges the one-time code for the new App. The call needs no
/// credential: the code, valid for an hour and usable once, is the proof.
pub async fn convert(client: &GitHubClient, code: &str) -> Result<CreatedApp, ConversionError> {
    // GitHub's codes are letters and digits; anything else (`..` would
    // change the request's path) is not one.
    if code.is_empty() || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ConversionError::NotACode);
    }
    let path = format!(
        "/app-manifests/{}/conversions",
        utf8_percent_encode(code, PATH_SEGMENT)
    );
    let answer = client.post_anonymous(&path).await?;
    match answer.status {
        201 | 200 => {}
        404 => return Err(ConversionError::UnknownCode),
        status => {
            return Err(ConversionError::Refused {
                status,
                message: answer.message.unwrap_or_default(),
            });
        }
    }
    let body = answer.body.unwrap_or_default();
    // The error must not quote the body: it holds the private key.
    let conversion: Conversion = serde_json::from_str(&body).map_err(|e| {
        ConversionError::BadAnswer(format!("at line {}, column {}", e.line(), e.column()))
    })?;
    if !conversion.pem.contains("PRIVATE KEY") {
        return Err(ConversionError::BadAnswer(
            "`pem` is not a PEM private key".into(),
        ));
    }
    Ok(CreatedApp {
        id: conversion.id,
        slug: conversion
            .slug
            .unwrap_or_else(|| conversion.name.to_ascii_lowercase().replace(' ', "-")),
        name: conversion.name,
        html_url: conversion.html_url,
        pem: Secret::new(conversion.pem),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_url_follows_the_api_url() {
        let cases = [
            ("https://api.github.com", "https://github.com"),
            ("https://api.github.com/", "https://github.com"),
            ("https://api.acme.ghe.com", "https://acme.ghe.com"),
            ("https://ghe.example.com/api/v3", "https://ghe.example.com"),
            ("https://ghe.example.com/api/v3/", "https://ghe.example.com"),
            (
                "https://ghe.example.com:8443/api/v3",
                "https://ghe.example.com:8443",
            ),
            (
                "https://example.com/github/api/v3",
                "https://example.com/github",
            ),
            ("http://127.0.0.1:4000", "http://127.0.0.1:4000"),
            ("not a url", "not a url"),
        ];
        for (api, web) in cases {
            assert_eq!(web_url(api), web, "for {api}");
        }
    }

    #[test]
    fn the_create_page_is_the_user_s_or_the_organization_s() {
        assert_eq!(
            create_app_url("https://github.com", None, "abc123"),
            "https://github.com/settings/apps/new?state=abc123"
        );
        assert_eq!(
            create_app_url("https://ghe.example.com/", Some("acme"), "abc123"),
            "https://ghe.example.com/organizations/acme/settings/apps/new?state=abc123"
        );
        assert_eq!(
            create_app_url("https://github.com", None, "a b&c"),
            "https://github.com/settings/apps/new?state=a%20b%26c"
        );
        assert_eq!(
            app_settings_url("https://github.com", Some("acme"), "relay"),
            "https://github.com/organizations/acme/settings/apps/relay"
        );
        assert_eq!(
            app_settings_url("https://github.com", None, "relay"),
            "https://github.com/settings/apps/relay"
        );
    }

    #[test]
    fn organization_logins_are_checked() {
        for good in ["acme", "acme-corp", "a", "A1-b2"] {
            assert!(is_valid_org(good), "{good}");
        }
        for bad in [
            "",
            "-acme",
            "acme-",
            "ac--me",
            "acme/x",
            "acme corp",
            &"a".repeat(40),
        ] {
            assert!(!is_valid_org(bad), "{bad}");
        }
    }

    #[test]
    fn the_manifest_asks_for_a_private_app_without_webhook() {
        let manifest = manifest(
            "dispatch-relay-x1",
            "https://relay.example.com",
            "http://127.0.0.1:3000/callback",
        );
        assert_eq!(manifest["name"], "dispatch-relay-x1");
        assert_eq!(manifest["url"], "https://relay.example.com");
        assert_eq!(manifest["redirect_url"], "http://127.0.0.1:3000/callback");
        assert_eq!(manifest["public"], false);
        assert_eq!(
            manifest["default_permissions"],
            json!({"contents": "write", "metadata": "read", "actions": "write"})
        );
        assert_eq!(manifest["default_events"], json!([]));
        assert!(manifest.get("hook_attributes").is_none());
    }

    #[test]
    fn the_install_link_is_under_the_app_page() {
        let app = CreatedApp {
            id: 1,
            slug: "relay".into(),
            name: "relay".into(),
            html_url: "https://github.com/apps/relay/".into(),
            pem: Secret::new(String::new()),
        };
        assert_eq!(
            app.install_url(),
            "https://github.com/apps/relay/installations/new"
        );
        assert!(!format!("{app:?}").contains("PRIVATE"));
    }
}
