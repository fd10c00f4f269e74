//! Secrets that rotate without a restart: the GitHub App's private key, the webhook secret and
//! the TMC API token, each read from a file (as the Helm chart mounts them), are replaced in
//! the middle of a story the way an operator rotates them, and the story finishes.
//!
//! The emulators end the old credentials for good (the App key is deleted, the CSP API token
//! revoked, the webhook signed with the new secret), so a bot that kept the old value would
//! fail here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tkgops_emulators::github::{webhook_signature, WebhookTarget};
use tkgops_sandbox::{Timings, APPROVER, AUTHOR};

use crate::e2e::{set_aws_env, start_env};
use crate::trust::{merge, open_and_plan};

const NEW_APP_PRIVATE_KEY: &str =
    include_str!("../fixtures/github/test-only-app-private-key-2.pem");
const NEW_APP_PUBLIC_KEY: &str = include_str!("../fixtures/github/test-only-app-public-key-2.pem");
const NEW_WEBHOOK_SECRET: &str = "a-rotated-webhook-secret-of-more-than-24-chars";
const NEW_TMC_TOKEN: &str = "tmc-rotated-api-token";
const CLUSTER: &str = "team-a-prod";

/// Replaces `path` as the kubelet does when a mounted Secret changes: a new file renamed over
/// the old one (readers see the old or the new content, never a mix).
fn swap_file(path: &Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_app_key_the_webhook_secret_and_the_tmc_token_rotate_mid_story() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    set_aws_env(&env);
    let secrets = tempfile::tempdir().unwrap();
    let (key_file, webhook_file, tmc_file) = (
        secrets.path().join("github-app.pem"),
        secrets.path().join("webhook-secret"),
        secrets.path().join("tmc-token"),
    );
    std::fs::write(&key_file, tkgops_sandbox::GITHUB_APP_PRIVATE_KEY).unwrap();
    std::fs::write(&webhook_file, &env.webhook_secret).unwrap();
    std::fs::write(&tmc_file, tkgops_sandbox::TMC_TOKEN).unwrap();
    let mut cfg = env.bot_config(&timings);
    cfg.github.app_id = Some(tkgops_sandbox::GITHUB_APP_ID);
    cfg.github.private_key_file = Some(key_file.clone());
    cfg.webhook_secret_file = Some(webhook_file.clone());
    cfg.tmc_token_file = Some(tmc_file.clone());
    // No variable holds a secret: the bot can only have them from the files.
    cfg.tmc_token_env = "TKGOPS_ROTATION_TEST_UNSET_TMC_TOKEN".into();
    cfg.webhook_secret_env = "TKGOPS_ROTATION_TEST_UNSET_WEBHOOK_SECRET".into();

    let bot = Arc::new(tkgops::serve::build(&cfg).await.expect("bot"));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (addr, http) = tkgops::serve::start_http_with(
        &bot,
        "127.0.0.1:0",
        cfg.webhook_secret_source(),
        wait_stop(stop_rx.clone()),
    )
    .await
    .expect("http");
    let url = format!("http://{addr}/webhooks/github");
    env.github
        .set_webhook(Some(WebhookTarget::new(&url, &env.webhook_secret)));
    let b = bot.clone();
    let run = tokio::spawn({
        let rx = stop_rx.clone();
        async move {
            b.run(timings.poll, Duration::from_secs(2), wait_stop(rx))
                .await
        }
    });

    // Planned with the first App key and the first webhook secret.
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    assert!(env.github.installation_tokens_issued_with_key(1) >= 1);
    let before_rotation = env.github.deliveries().len();
    assert!(before_rotation > 0, "the emulator delivered webhooks");

    // The operator rotates all three. GitHub App: a second key, deployed, then the first one
    // deleted (its installation tokens end with it).
    let new_key = env.github.add_app_key(NEW_APP_PUBLIC_KEY).unwrap();
    swap_file(&key_file, NEW_APP_PRIVATE_KEY);
    assert!(env.github.delete_app_key(1));
    // Webhook: the bot's file first, then GitHub's setting (deliveries in between are signed
    // with the old secret, which the bot still accepts for a while).
    swap_file(&webhook_file, NEW_WEBHOOK_SECRET);
    env.github
        .set_webhook(Some(WebhookTarget::new(&url, NEW_WEBHOOK_SECRET)));
    // TMC: a second API token, deployed, then the first one revoked.
    env.tmc.add_api_token(NEW_TMC_TOKEN);
    swap_file(&tmc_file, NEW_TMC_TOKEN);
    env.tmc.revoke_api_token(tkgops_sandbox::TMC_TOKEN);

    // The merge runs the whole create story, TMC attach included, with the new credentials.
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "success", "{comment}");
    assert!(
        env.github.installation_tokens_issued_with_key(new_key) >= 1,
        "installation tokens minted with the new App key"
    );
    let attached = env.tmc.cluster(CLUSTER).expect("the TMC cluster");
    assert_eq!(
        attached["status"]["phase"].as_str(),
        Some("READY"),
        "{attached}"
    );
    let authors: Vec<String> = env
        .github
        .comments(pr)
        .into_iter()
        .filter(|c| c.body.contains("<!-- tkgops:sticky -->"))
        .map(|c| c.user)
        .collect();
    assert_eq!(authors, ["tkgops[bot]"], "one sticky comment, by the App");
    // Every webhook delivery was accepted, those signed with the new secret included.
    let deliveries = env.github.deliveries();
    let signed_with_new = deliveries[before_rotation..]
        .iter()
        .filter(|d| {
            d.signature.as_deref()
                == Some(&webhook_signature(
                    NEW_WEBHOOK_SECRET.as_bytes(),
                    d.body.as_bytes(),
                ))
        })
        .count();
    assert!(signed_with_new > 0, "no delivery after the rotation");
    for d in &deliveries {
        assert!(
            d.status.is_some_and(|s| (200..300).contains(&s)),
            "{} {:?}: {:?} {}",
            d.event,
            d.action,
            d.status,
            d.response
        );
    }
    // No secret reached the PR.
    for secret in [NEW_APP_PRIVATE_KEY, NEW_WEBHOOK_SECRET, NEW_TMC_TOKEN] {
        assert!(!env.conversation(pr).contains(secret));
    }

    stop.send_replace(true);
    let _ = run.await;
    let _ = http.await;
}
