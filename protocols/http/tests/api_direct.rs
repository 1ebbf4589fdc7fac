//! The HTTP adapter's router served on its own (no server crate): routes
//! refuse work until the broker has recovered (`HttpApi::open`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use switchyard_core::{Broker, CoreConfig};
use switchyard_http::{HttpApi, HttpConfig};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn routes_answer_503_until_the_api_is_opened() {
    let broker = Broker::new(CoreConfig::new());
    let stop = CancellationToken::new();
    let api = HttpApi::new(HttpConfig::default(), broker.clone(), stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, api.router()).into_future());
    let http = reqwest::Client::new();

    let r = http
        .post(format!("{url}/v1/topics/a.b"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "starting");
    for path in ["/v1/queues/q/messages", "/v1/topics/a/events"] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 503, "{path}");
    }
    let r = http
        .get(format!("{url}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the document is always served");
    assert_eq!(broker.stats().published, 0);

    api.open();
    let r = http
        .post(format!("{url}/v1/topics/a.b"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(broker.stats().published, 1);
    stop.cancel();
    server.abort();
}
