//! The process sections: `[server]`, `[admin]`, `[log]`.

use super::checker::*;
use crate::config::model::{self, ConfigFile};
use crate::config::*;

/// Shortest admin token accepted.
const MIN_ADMIN_TOKEN: usize = 16;

/// `[server]`.
pub(super) fn server(c: &mut Checker, file: &ConfigFile) -> ServerConfig {
    let workers = if file.server.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        file.server.workers
    };
    let request_id = match file.server.request_id.as_ref() {
        None => crate::config::RequestIdMode::Generate,
        Some(m) => match m.get_ref().as_str() {
            "generate" => crate::config::RequestIdMode::Generate,
            "keep" => crate::config::RequestIdMode::Keep,
            "off" => crate::config::RequestIdMode::Off,
            other => {
                c.at(
                    m,
                    "server.request_id".into(),
                    format!("unknown mode `{other}`"),
                    Some(
                        "use \"generate\" (keep the client's or make one), \"keep\" (only the client's) or \"off\""
                            .into(),
                    ),
                );
                crate::config::RequestIdMode::Generate
            }
        },
    };
    let mut forwarded = crate::config::ForwardedHeaders::default();
    if let Some(list) = &file.server.forwarded_headers {
        forwarded = crate::config::ForwardedHeaders {
            xff: false,
            proto: false,
            host: false,
        };
        for (i, h) in list.iter().enumerate() {
            match h.get_ref().as_str() {
                "for" => forwarded.xff = true,
                "proto" => forwarded.proto = true,
                "host" => forwarded.host = true,
                other => c.at(
                    h,
                    format!("server.forwarded_headers[{i}]"),
                    format!("unknown header `{other}`"),
                    Some(
                        "list any of \"for\", \"proto\", \"host\" (X-Forwarded-For, -Proto, -Host); [] adds none"
                            .into(),
                    ),
                ),
            }
        }
    }
    ServerConfig {
        workers,
        drain_timeout: c.dur(&file.server.drain_timeout, "server.drain_timeout".into()),
        maintenance_handover: c.dur(&file.server.maintenance_handover, "server.maintenance_handover".into()),
        request_id,
        forwarded,
    }
}

/// `[admin]`: its address, and a token wherever it is reachable beyond loopback.
pub(super) fn admin(c: &mut Checker, file: &ConfigFile) -> AdminConfig {
    let admin_explicit = file.admin.is_some();
    let admin_section = file
        .admin
        .as_ref()
        .map_or_else(Default::default, |a| model::AdminSection {
            listen: a.listen.clone(),
            token: a.token.clone(),
        });
    let admin_listen = c.addr(&admin_section.listen, "admin.listen".into());
    let token = admin_section.token.as_ref().filter(|t| !t.get_ref().is_empty());
    if let Some(t) = token {
        let v = t.get_ref();
        if v.chars().count() < MIN_ADMIN_TOKEN {
            c.at(
                t,
                "admin.token".into(),
                format!(
                    "the token is {} characters long; a guessable token guards nothing",
                    v.chars().count()
                ),
                Some(format!(
                    "use at least {MIN_ADMIN_TOKEN} random characters, e.g. the output of `openssl rand -hex 24`"
                )),
            );
        } else if !v.chars().all(|ch| ch.is_ascii_graphic()) {
            c.at(
                t,
                "admin.token".into(),
                "the token holds spaces or characters outside printable ASCII".into(),
                Some("use letters, digits and punctuation only, e.g. `openssl rand -hex 24`".into()),
            );
        }
        c.secret(t, "admin.token".into());
    }
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() && token.is_none() {
            c.at(
                &admin_section.listen,
                "admin.listen".into(),
                format!("`{a}` is reachable beyond loopback but no token is set"),
                Some("set admin.token = \"…\" (a long random string) or listen on 127.0.0.1".into()),
            );
        }
    }
    let admin = AdminConfig {
        listen: admin_listen.unwrap_or_else(|| "127.0.0.1:9900".parse().expect("literal")),
        token: token.map(|t| t.get_ref().clone()),
        explicit: admin_explicit,
    };

    admin
}

/// `[log]`: levels, formats, the access log's target.
pub(super) fn log(c: &mut Checker, file: &ConfigFile, text: &str) -> LogConfig {
    let log = LogConfig {
        level: file.log.level.clone(),
        format: log_format(&mut *c, &file.log.format, "log.format"),
        access_log: match file.log.access_log.as_str() {
            "off" | "" => AccessLogTarget::Off,
            "stdout" => AccessLogTarget::Stdout,
            "stderr" => AccessLogTarget::Stderr,
            p => {
                let (line, col) = text.find("access_log").map(|at| c.lines.locate(at)).unwrap_or((1, 1));
                // As given: a relative path is taken from the working directory.
                let path = std::path::PathBuf::from(p);
                c.files.push(crate::config::access::FileUse {
                    path: path.clone(),
                    access: crate::config::access::Access::Append,
                    key: "log.access_log".into(),
                    line,
                    col,
                });
                AccessLogTarget::File(path)
            }
        },
        access_log_format: log_format(&mut *c, &file.log.access_log_format, "log.access_log_format"),
    };
    log
}
