//! The route table. `Route::find` turns a method and path into a route (with its path
//! parameters parsed); the template names are what logs and metrics use, never raw paths.

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Register,
    VerifyEmail,
    PasswordReset,
    PasswordResetConfirm,
    Login,
    Refresh,
    Logout,
    ListSessions,
    RevokeSession(u64),
    Me,
    AdminEmails,
}

/// Why no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    NotFound,
    MethodNotAllowed,
}

/// Every (method, template) served, for the OpenAPI check and for documentation.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("POST", "/v1/accounts"),
    ("POST", "/v1/accounts/verify-email"),
    ("POST", "/v1/accounts/password-reset"),
    ("POST", "/v1/accounts/password-reset/confirm"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions/refresh"),
    ("DELETE", "/v1/sessions/current"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/v1/me"),
    ("GET", "/v1/admin/emails"),
];

impl Route {
    pub fn find(method: &Method, path: &str) -> Result<Route, RouteMiss> {
        use Route::*;
        let one = |route: Route, allowed: Method| {
            if *method == allowed {
                Ok(route)
            } else {
                Err(RouteMiss::MethodNotAllowed)
            }
        };
        match path {
            "/health" => one(Health, Method::GET),
            "/metrics" => one(Metrics, Method::GET),
            "/v1/accounts" => one(Register, Method::POST),
            "/v1/accounts/verify-email" => one(VerifyEmail, Method::POST),
            "/v1/accounts/password-reset" => one(PasswordReset, Method::POST),
            "/v1/accounts/password-reset/confirm" => one(PasswordResetConfirm, Method::POST),
            "/v1/sessions" => match *method {
                Method::POST => Ok(Login),
                Method::GET => Ok(ListSessions),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/sessions/refresh" => one(Refresh, Method::POST),
            "/v1/sessions/current" => one(Logout, Method::DELETE),
            "/v1/me" => one(Me, Method::GET),
            "/v1/admin/emails" => one(AdminEmails, Method::GET),
            _ => match path.strip_prefix("/v1/sessions/") {
                Some(id) => match id.parse::<u64>() {
                    Ok(id) => one(RevokeSession(id), Method::DELETE),
                    Err(_) => Err(RouteMiss::NotFound),
                },
                None => Err(RouteMiss::NotFound),
            },
        }
    }

    /// The route template, as in `ROUTES` and docs/openapi.yaml.
    pub fn template(self) -> &'static str {
        use Route::*;
        match self {
            Health => "/health",
            Metrics => "/metrics",
            Register => "/v1/accounts",
            VerifyEmail => "/v1/accounts/verify-email",
            PasswordReset => "/v1/accounts/password-reset",
            PasswordResetConfirm => "/v1/accounts/password-reset/confirm",
            Login | ListSessions => "/v1/sessions",
            Refresh => "/v1/sessions/refresh",
            Logout => "/v1/sessions/current",
            RevokeSession(_) => "/v1/sessions/{id}",
            Me => "/v1/me",
            AdminEmails => "/v1/admin/emails",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_route_is_found_with_its_template() {
        for (method, template) in ROUTES {
            let method: Method = method.parse().unwrap();
            let path = template.replace("{id}", "123");
            let route = Route::find(&method, &path).unwrap();
            assert_eq!(route.template(), *template);
        }
        assert_eq!(Route::find(&Method::GET, "/nope"), Err(RouteMiss::NotFound));
        assert_eq!(
            Route::find(&Method::PUT, "/v1/me"),
            Err(RouteMiss::MethodNotAllowed)
        );
        assert_eq!(
            Route::find(&Method::DELETE, "/v1/sessions/abc"),
            Err(RouteMiss::NotFound)
        );
    }
}
