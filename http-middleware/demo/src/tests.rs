//! The demo's argument and route unit tests.

use super::*;
use tessera_middleware::SigningKeys;

const LONG: &str = "a,b: one secret of more than thirty-two bytes";

#[test]
fn a_secret_with_commas_is_one_secret() {
    let args = DemoArgs::try_from_args(["demo", "--secret", LONG]).unwrap();
    assert_eq!(args.secrets, [LONG]);
    let args = DemoArgs::try_from_args(["demo", "--secret", LONG, "--secret", "x,y,z"]).unwrap();
    assert_eq!(args.secrets, [LONG, "x,y,z"]);
    assert!(SigningKeys::new(&args.secrets).is_err(), "x,y,z is 5 bytes");
}

#[test]
fn env_secrets_are_one_per_line_the_first_signing() {
    let newer = "the newer secret, signing, thirty-two bytes+";
    // The only test in this binary that reads TESSERA_SECRETS.
    std::env::set_var("TESSERA_SECRETS", format!("{newer}\r\n{LONG}\n"));
    let from_env = DemoArgs::try_from_args(["demo"]);
    let flag_wins = DemoArgs::try_from_args(["demo", "--secret", LONG]);
    std::env::remove_var("TESSERA_SECRETS");
    let args = from_env.unwrap();
    assert_eq!(args.secrets, [newer, LONG]);
    assert_eq!(
        flag_wins.unwrap().secrets,
        [LONG],
        "the flag overrides the variable"
    );

    let keys = SigningKeys::new(&args.secrets).unwrap();
    let id = tessera_engine::SessionId::generate();
    let value = keys.sign("koa:sess", &id);
    let signer = SigningKeys::new([newer]).unwrap();
    assert_eq!(signer.verify("koa:sess", &value).unwrap().id, id);
    let old = SigningKeys::new([LONG]).unwrap().sign("koa:sess", &id);
    assert!(keys.verify("koa:sess", &old).unwrap().stale_key);
}

#[test]
fn help_documents_the_secret_contract() {
    let help = DemoArgs::command().render_long_help().to_string();
    assert!(help.contains("TESSERA_SECRETS"), "{help}");
    assert!(help.contains("one secret per line"), "{help}");
}

#[tokio::test]
async fn an_overlong_ttl_is_a_configuration_error_not_a_panic() {
    let args = DemoArgs::try_from_args(["demo", "--ttl", "300000000000"]).unwrap();
    assert_eq!(args.ttl, 300_000_000_000);
    let Err(err) = build_engine(&args).await else {
        panic!("a 300000000000 s TTL must be refused");
    };
    let message = err.to_string();
    assert!(
        message.contains("400 days") || message.contains("TTL"),
        "{message}"
    );
}
