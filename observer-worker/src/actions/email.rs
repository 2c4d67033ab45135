//! The e-mail action: renders `to`, `subject`, `body` (and `html`) with the event and its
//! lookups, and sends one message through the worker's `smtp:` server (lettre, tokio, rustls,
//! pooled connections).
//!
//! * `Message-ID: <{pair id}@fraiseql-observers>`: derived from the (event, action) pair (the
//!   webhook-id), identical on every retry and redelivery: the e-mail equivalent of
//!   `webhook-id`, so a receiving system can drop duplicates.
//! * Classification: SMTP 4xx, connection errors and timeouts are retryable; 5xx is permanent
//!   (dead-lettered with the server's reply); an authentication failure (530/534/535) is
//!   retryable and counts against the destination, so the circuit breaker opens and queued
//!   mail waits instead of burning its attempts on a wrong password.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Action, AttemptError, BoxFuture, Delivered, Delivery};
use crate::config::{EmailConfig, SmtpConfig, SmtpTls};
use crate::lookups::Lookups;
use crate::retry::RetryPolicy;
use crate::templates::{self, Template};

/// The domain part of every Message-ID.
pub const MESSAGE_ID_DOMAIN: &str = "fraiseql-observers";

/// SMTP replies that mean "your credentials were refused": a destination problem, not the
/// message's (treated like an outage: retried, counted by the circuit breaker).
const AUTH_FAILURES: &[u16] = &[530, 534, 535];

/// The worker's SMTP server (one pooled transport for every e-mail action).
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    destination: String,
}

/// Why the `smtp:` section cannot be used (the build step reports it at start).
#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("smtp.from {0:?} is not an e-mail address")]
    From(String),
    #[error("smtp: cannot set up TLS for {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

impl Mailer {
    /// Builds the transport (no I/O: connections open on first use).
    pub fn new(cfg: &SmtpConfig) -> Result<Mailer, MailerError> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|_| MailerError::From(cfg.from.clone()))?;
        let tls_err = |source| MailerError::Tls {
            host: cfg.host.clone(),
            source,
        };
        let builder = match cfg.tls {
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(tls_err)?
            }
            SmtpTls::Implicit => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(tls_err)?
            }
            // validated: loopback only
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
        };
        let mut builder = builder
            .port(cfg.port)
            .timeout(Some(cfg.timeout))
            .pool_config(PoolConfig::new().max_size(cfg.pool_size));
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            destination: format!("smtp://{}:{}", cfg.host, cfg.port),
        })
    }
}

pub struct EmailAction {
    cfg: EmailConfig,
    mailer: Option<Arc<Mailer>>,
    lookups: Arc<Lookups>,
    used_lookups: BTreeSet<String>,
}

impl EmailAction {
    pub fn new(cfg: &EmailConfig, mailer: Option<Arc<Mailer>>, lookups: Arc<Lookups>) -> Self {
        let mut used_lookups = BTreeSet::new();
        for t in cfg
            .to
            .iter()
            .chain([&cfg.subject, &cfg.body])
            .chain(cfg.html.as_ref())
        {
            used_lookups.extend(t.lookups().iter().cloned());
        }
        EmailAction {
            cfg: cfg.clone(),
            mailer,
            lookups,
            used_lookups,
        }
    }

    /// The message for this delivery (recipients, subject and parts rendered).
    pub async fn render(&self, d: &Delivery, from: &Mailbox) -> Result<Message, AttemptError> {
        let event: serde_json::Value = serde_json::from_slice(&d.body)
            .map_err(|e| AttemptError::permanent(format!("the event body is not JSON: {e}")))?;
        let resolved = self
            .lookups
            .resolve_all(&self.used_lookups, &event)
            .await
            .map_err(|e| e.into_attempt())?;
        let ctx = templates::context(&event, Some(&resolved));
        let render = |what: &str, t: &Template| {
            t.render(&ctx).map_err(|e| {
                AttemptError::permanent(format!("`{what}` does not render for this event: {e}"))
            })
        };
        let mut b = Message::builder()
            .from(from.clone())
            .message_id(Some(message_id(&d.webhook_id)))
            .subject(render("subject", &self.cfg.subject)?);
        for (i, t) in self.cfg.to.iter().enumerate() {
            let addr = render(&format!("to[{i}]"), t)?;
            let mb: Mailbox = addr.trim().parse().map_err(|_| {
                AttemptError::permanent(format!("to[{i}] rendered {addr:?}, not an e-mail address"))
            })?;
            b = b.to(mb);
        }
        let text = render("body", &self.cfg.body)?;
        let message = match &self.cfg.html {
            Some(h) => b.multipart(MultiPart::alternative_plain_html(text, render("html", h)?)),
            None => b.header(ContentType::TEXT_PLAIN).body(text),
        };
        message.map_err(|e| AttemptError::permanent(format!("cannot build the message: {e}")))
    }

    async fn attempt(&self, d: &Delivery) -> Result<Delivered, AttemptError> {
        let Some(mailer) = &self.mailer else {
            return Err(AttemptError::permanent(
                "this worker has no `smtp:` section: e-mail actions cannot be sent",
            ));
        };
        let message = self.render(d, &mailer.from).await?;
        match mailer.transport.send(message).await {
            Ok(r) => Ok(Delivered {
                status: code_of(&r.code().to_string()),
            }),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// `<{pair id}@fraiseql-observers>` (identical on every attempt of the pair).
pub fn message_id(pair_id: &str) -> String {
    format!("<{pair_id}@{MESSAGE_ID_DOMAIN}>")
}

fn code_of(text: &str) -> Option<u16> {
    text.get(..3).and_then(|c| c.parse().ok())
}

/// SMTP 4xx, transport errors and timeouts: retryable; 5xx: permanent with the reply;
/// authentication refused: retryable and the destination's fault (breaker).
fn classify(e: &lettre::transport::smtp::Error) -> AttemptError {
    let status = e.status().and_then(|c| code_of(&c.to_string()));
    // the error text carries the server's reply; never credentials
    let message = match status {
        Some(s) => format!("SMTP {s}: {e}"),
        None => format!("SMTP: {e}"),
    };
    match status {
        Some(s) if AUTH_FAILURES.contains(&s) => AttemptError {
            status,
            ..AttemptError::retryable(format!(
                "{message} (authentication refused: check smtp.user / smtp.password)"
            ))
        },
        Some(s) if (500..600).contains(&s) => AttemptError {
            status,
            ..AttemptError::permanent(message)
        },
        _ if e.is_permanent() => AttemptError {
            status,
            ..AttemptError::permanent(message)
        },
        _ => AttemptError {
            status,
            ..AttemptError::retryable(message)
        },
    }
}

impl Action for EmailAction {
    fn type_name(&self) -> &'static str {
        "email"
    }
    fn timeout(&self) -> Duration {
        self.cfg.timeout
    }
    fn retry_policy(&self) -> &RetryPolicy {
        &self.cfg.retry
    }
    fn destination(&self) -> Option<&str> {
        self.mailer.as_deref().map(|m| m.destination.as_str())
    }
    fn is_async(&self) -> bool {
        self.cfg.asynchronous
    }
    fn execute<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Delivered, AttemptError>> {
        Box::pin(self.attempt(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_the_pair_id() {
        assert_eq!(
            message_id("evt_0123456789abcdef_42_1"),
            "<evt_0123456789abcdef_42_1@fraiseql-observers>"
        );
    }

    #[test]
    fn reply_codes_are_read_from_their_text() {
        assert_eq!(code_of("550"), Some(550));
        assert_eq!(code_of("4"), None);
    }
}
