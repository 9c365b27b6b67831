//! `ble-ota web`: serves the web updater on localhost, where browsers allow Web Bluetooth
//! without https. The page is a static folder (`cargo xtask web` builds it); any web server
//! can host the same folder over https.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit::{CliError, ExitCode};

/// Options of `web`.
#[derive(Debug, clap::Args)]
pub struct WebArgs {
    /// The page's folder. Default: the one `cargo xtask web` builds in this checkout
    /// (target/web/site).
    #[arg(long, value_name = "DIR")]
    pub site: Option<PathBuf>,
    /// Port on localhost (0: any free one).
    #[arg(long, default_value_t = 8480)]
    pub port: u16,
}

/// Where `cargo xtask web` puts the page, in the checkout this binary was built from.
fn built_site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/web/site")
}

pub fn run(args: WebArgs, json: bool) -> Result<()> {
    let site = args.site.unwrap_or_else(built_site);
    if !site.join("index.html").is_file() || !site.join("pkg/ota_web_bg.wasm").is_file() {
        return Err(CliError::new(
            ExitCode::Usage,
            format!(
                "no web updater in {}: build it with `cargo xtask web`, or pass --site DIR (a folder `cargo xtask web` made)",
                site.display()
            ),
        )
        .into());
    }
    let site = site.canonicalize()?;
    // Loopback only: a page from localhost may use Web Bluetooth, one from the LAN may not.
    let server = tiny_http::Server::http(("127.0.0.1", args.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on localhost:{}: {e}", args.port))?;
    let port = server
        .server_addr()
        .to_ip()
        .context("the server has no IP address")?
        .port();
    let url = format!("http://localhost:{port}/");
    if json {
        println!("{}", serde_json::json!({"event": "serving", "url": url}));
    } else {
        println!(
            "The web updater is at {url}: open it in Chrome or Edge (on Linux, Chromium started with --enable-features=WebBluetooth). Ctrl-C stops."
        );
    }
    for request in server.incoming_requests() {
        let response = respond(&site, request.url());
        // A browser that went away mid-answer is no reason to stop serving.
        let _ = request.respond(response);
    }
    Ok(())
}

/// The file a URL path names inside `site`, or `None` for anything that leaves it.
fn resolve(site: &Path, url: &str) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("/");
    let mut out = site.to_path_buf();
    for part in Path::new(path.trim_start_matches('/')).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if out.is_dir() {
        out.push("index.html");
    }
    // A link inside the folder that points out of it is refused too.
    let real = out.canonicalize().ok()?;
    real.starts_with(site).then_some(real)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        // WebAssembly.instantiateStreaming insists on this type.
        "wasm" => "application/wasm",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn respond(site: &Path, url: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
    };
    match resolve(site, url).and_then(|p| std::fs::read(&p).ok().map(|b| (p, b))) {
        Some((path, body)) => tiny_http::Response::from_data(body)
            .with_header(header("Content-Type", content_type(&path)))
            // A rebuilt page is picked up on reload.
            .with_header(header("Cache-Control", "no-cache")),
        None => tiny_http::Response::from_data(b"not found".to_vec())
            .with_status_code(404)
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_site() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(site.join("pkg")).unwrap();
        std::fs::write(site.join("index.html"), "<html>").unwrap();
        std::fs::write(site.join("pkg/ota_web_bg.wasm"), "\0asm").unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        let site = site.canonicalize().unwrap();
        assert_eq!(resolve(&site, "/"), Some(site.join("index.html")));
        assert_eq!(resolve(&site, "/?x=1"), Some(site.join("index.html")));
        assert_eq!(
            resolve(&site, "/pkg/ota_web_bg.wasm"),
            Some(site.join("pkg/ota_web_bg.wasm"))
        );
        assert_eq!(resolve(&site, "/../secret"), None);
        assert_eq!(resolve(&site, "/pkg/../../secret"), None);
        assert_eq!(resolve(&site, "/missing.js"), None);
        assert_eq!(
            content_type(Path::new("a/ota_web_bg.wasm")),
            "application/wasm"
        );
    }
}
