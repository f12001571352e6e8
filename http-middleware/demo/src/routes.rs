//! The demo's routing table: a pure function from method and path to a route, so a property
//! test can walk every method over any path. Every path has an answer (unknown ones are
//! [`Route::NotFound`]); matching never slices a path by position, so no input can panic it.

use http::Method;

/// One of the demo's routes, with what the path carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /`: the seed's view counter.
    Home,
    /// `GET /views`.
    Views,
    /// `GET /session`: every field as JSON.
    Session,
    /// `PUT /session/{field}` (percent-decoded).
    PutField(String),
    /// `DELETE /session/{field}` (percent-decoded).
    DeleteField(String),
    /// `POST /login`.
    Login,
    /// `GET /devices`.
    Devices,
    /// `DELETE /devices/{handle}`.
    RevokeDevice(String),
    /// `POST /logout-everywhere`.
    LogoutEverywhere,
    /// `GET /account/devices`: the HTML page.
    DevicesPage,
    /// `POST /account/devices/{handle}/revoke`: the page's form.
    RevokeFromPage(String),
    /// `POST /logout`.
    Logout,
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Healthz,
    /// Anything else.
    NotFound,
}

/// The route for `method` and `path`.
pub(crate) fn route(method: &Method, path: &str) -> Route {
    let field = path
        .strip_prefix("/session/")
        .filter(|f| !f.is_empty() && !f.contains('/'))
        .map(|f| {
            percent_encoding::percent_decode_str(f)
                .decode_utf8_lossy()
                .into_owned()
        });
    match (method, path, field) {
        (&Method::GET, "/", _) => Route::Home,
        (&Method::GET, "/views", _) => Route::Views,
        (&Method::GET, "/session", _) => Route::Session,
        (&Method::PUT, _, Some(field)) => Route::PutField(field),
        (&Method::DELETE, _, Some(field)) => Route::DeleteField(field),
        (&Method::POST, "/login", _) => Route::Login,
        (&Method::GET, "/devices", _) => Route::Devices,
        (&Method::POST, "/logout-everywhere", _) => Route::LogoutEverywhere,
        (&Method::GET, "/account/devices", _) => Route::DevicesPage,
        (&Method::POST, "/logout", _) => Route::Logout,
        (&Method::GET, "/metrics", _) => Route::Metrics,
        (&Method::GET, "/healthz", _) => Route::Healthz,
        (&Method::DELETE, p, _) => match p.strip_prefix("/devices/") {
            Some(handle) => Route::RevokeDevice(handle.to_owned()),
            None => Route::NotFound,
        },
        (&Method::POST, p, _) => match p
            .strip_prefix("/account/devices/")
            .and_then(|rest| rest.strip_suffix("/revoke"))
        {
            Some(handle) => Route::RevokeFromPage(handle.to_owned()),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const METHODS: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
        Method::CONNECT,
    ];

    /// Path segments that broke or may break a positional match: empty and doubled ones,
    /// encodings, NUL, `..`, long ones, and the demo's own words.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("..".to_owned()),
            Just("%00".to_owned()),
            Just("%2F".to_owned()),
            Just("%zz".to_owned()),
            Just("revoke".to_owned()),
            Just("account".to_owned()),
            Just("devices".to_owned()),
            Just("session".to_owned()),
            "[a-zA-Z0-9%._~-]{0,12}",
            "\\PC{0,6}",
            Just("x".repeat(8192)),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..6).prop_map(|segments| {
            let mut path = String::from("/");
            path.push_str(&segments.join("/"));
            path
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn every_method_and_path_has_a_route(path in path()) {
            for method in &METHODS {
                let _ = route(method, &path);
            }
        }
    }

    #[test]
    fn the_paths_that_overlap_route_without_panicking() {
        // Both a prefix and a suffix of the page's revoke form, overlapping: it once sliced
        // `&p[17..16]`.
        assert_eq!(
            route(&Method::POST, "/account/devices/revoke"),
            Route::NotFound
        );
        assert_eq!(
            route(&Method::POST, "/account/devices//revoke"),
            Route::RevokeFromPage(String::new())
        );
        assert_eq!(
            route(&Method::POST, "/account/devices/h1/revoke"),
            Route::RevokeFromPage("h1".into())
        );
        assert_eq!(
            route(&Method::DELETE, "/devices/h1"),
            Route::RevokeDevice("h1".into())
        );
        assert_eq!(
            route(&Method::PUT, "/session/a%20b"),
            Route::PutField("a b".into())
        );
        assert_eq!(route(&Method::PUT, "/session/"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/session/x"), Route::NotFound);
    }
}
