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
    UserById(u64),
    UserByName,
    Follow(u64),
    Unfollow(u64),
    Followers(u64),
    Following(u64),
    Block(u64),
    Unblock(u64),
    Mute(u64),
    Unmute(u64),
    UserPosts(u64),
    CreatePost,
    GetPost(u64),
    DeletePost(u64),
    HomeTimeline,
    UpdateProfile,
    GetPreferences,
    UpdatePreferences,
    LikePost(u64),
    UnlikePost(u64),
    ListComments(u64),
    CreateComment(u64),
    EditComment(u64),
    DeleteComment(u64),
    LikeComment(u64),
    UnlikeComment(u64),
    EditPost(u64),
    GetSettings,
    UpdateSettings,
    FollowRequests,
    Blocks,
    Mutes,
    ApproveFollowRequest(u64),
    RejectFollowRequest(u64),
    Stream,
    CreateConversation,
    ListConversations,
    GetConversation(u64),
    ListMessages(u64),
    SendMessage(u64),
    MarkRead(u64),
    Typing(u64),
    LeaveConversation(u64),
    EditMessage(u64),
    DeleteMessage(u64),
    DsbRegister,
    DsbFollow,
    DsbUnfollow,
    DsbCompose,
    DsbUserTimeline,
    DsbHomeTimeline,
    MediaUpload,
    GetMedia(u64),
    DeleteMedia(u64),
    MediaFile(u64),
    TusOptions,
    TusCreate,
    TusHead(u64),
    TusPatch(u64),
    TusDelete(u64),
    Notifications,
    NotificationsRead,
    NotificationsUnreadCount,
    PushVapidKey,
    PushSubscriptions,
    PushSubscribe,
    PushUnsubscribe,
    Search,
    SearchBody,
    TagPosts,
    CreateReport,
    ModReports,
    ModResolveReport(u64),
    ModRemovePost(u64),
    ModRemoveComment(u64),
    ModSuspend(u64),
    ModUnsuspend(u64),
    ModGrantModerator(u64),
    ModRevokeModerator(u64),
    ModAudit,
    DeleteAccount,
    ExportAccount,
}

/// Why no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    NotFound,
    MethodNotAllowed,
}

/// An id in a path: digits only (no sign, no spaces), within `u64`.
fn parse_id(s: &str) -> Result<u64, RouteMiss> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RouteMiss::NotFound);
    }
    s.parse().map_err(|_| RouteMiss::NotFound)
}

/// The id at the start of `rest` and what follows its slash ("" when no slash does). A
/// trailing slash is no route: `/v1/posts/1/` is not `/v1/posts/1`.
fn id_and_tail(rest: &str) -> Result<(u64, &str), RouteMiss> {
    let (id, tail) = match rest.split_once('/') {
        Some((_, "")) => return Err(RouteMiss::NotFound),
        Some(pair) => pair,
        None => (rest, ""),
    };
    Ok((parse_id(id)?, tail))
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
    ("GET", "/v1/users/{id}"),
    ("GET", "/v1/users/@{username}"),
    ("POST", "/v1/users/{id}/follow"),
    ("DELETE", "/v1/users/{id}/follow"),
    ("GET", "/v1/users/{id}/followers"),
    ("GET", "/v1/users/{id}/following"),
    ("POST", "/v1/users/{id}/block"),
    ("DELETE", "/v1/users/{id}/block"),
    ("POST", "/v1/users/{id}/mute"),
    ("DELETE", "/v1/users/{id}/mute"),
    ("GET", "/v1/users/{id}/posts"),
    ("POST", "/v1/posts"),
    ("GET", "/v1/posts/{id}"),
    ("DELETE", "/v1/posts/{id}"),
    ("GET", "/v1/timelines/home"),
    ("PATCH", "/v1/me/profile"),
    ("GET", "/v1/me/preferences"),
    ("PATCH", "/v1/me/preferences"),
    ("POST", "/v1/posts/{id}/like"),
    ("DELETE", "/v1/posts/{id}/like"),
    ("GET", "/v1/posts/{id}/comments"),
    ("POST", "/v1/posts/{id}/comments"),
    ("PATCH", "/v1/comments/{id}"),
    ("DELETE", "/v1/comments/{id}"),
    ("POST", "/v1/comments/{id}/like"),
    ("DELETE", "/v1/comments/{id}/like"),
    ("PATCH", "/v1/posts/{id}"),
    ("GET", "/v1/me/settings"),
    ("PATCH", "/v1/me/settings"),
    ("GET", "/v1/me/follow-requests"),
    ("GET", "/v1/me/blocks"),
    ("GET", "/v1/me/mutes"),
    ("POST", "/v1/me/follow-requests/{id}/approve"),
    ("POST", "/v1/me/follow-requests/{id}/reject"),
    ("GET", "/v1/stream"),
    ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations"),
    ("GET", "/v1/conversations/{id}"),
    ("GET", "/v1/conversations/{id}/messages"),
    ("POST", "/v1/conversations/{id}/messages"),
    ("POST", "/v1/conversations/{id}/read"),
    ("POST", "/v1/conversations/{id}/typing"),
    ("DELETE", "/v1/conversations/{id}/membership"),
    ("PATCH", "/v1/messages/{id}"),
    ("DELETE", "/v1/messages/{id}"),
    ("POST", "/wrk2-api/user/register"),
    ("POST", "/wrk2-api/user/follow"),
    ("POST", "/wrk2-api/user/unfollow"),
    ("POST", "/wrk2-api/post/compose"),
    ("GET", "/wrk2-api/user-timeline/read"),
    ("GET", "/wrk2-api/home-timeline/read"),
    ("POST", "/v1/media"),
    ("GET", "/v1/media/{id}"),
    ("DELETE", "/v1/media/{id}"),
    ("GET", "/v1/media/{id}/{name}"),
    ("HEAD", "/v1/media/{id}/{name}"),
    ("OPTIONS", "/v1/uploads"),
    ("POST", "/v1/uploads"),
    ("HEAD", "/v1/uploads/{id}"),
    ("PATCH", "/v1/uploads/{id}"),
    ("DELETE", "/v1/uploads/{id}"),
    ("GET", "/v1/notifications"),
    ("POST", "/v1/notifications/read"),
    ("GET", "/v1/notifications/unread_count"),
    ("GET", "/v1/push/vapid_public_key"),
    ("GET", "/v1/push/subscriptions"),
    ("POST", "/v1/push/subscriptions"),
    ("DELETE", "/v1/push/subscriptions"),
    ("GET", "/v1/search"),
    ("POST", "/v1/search"),
    ("GET", "/v1/tags/{tag}"),
    ("POST", "/v1/reports"),
    ("GET", "/v1/moderation/reports"),
    ("POST", "/v1/moderation/reports/{id}/resolve"),
    ("DELETE", "/v1/moderation/posts/{id}"),
    ("DELETE", "/v1/moderation/comments/{id}"),
    ("POST", "/v1/moderation/users/{id}/suspension"),
    ("DELETE", "/v1/moderation/users/{id}/suspension"),
    ("POST", "/v1/moderation/users/{id}/moderator"),
    ("DELETE", "/v1/moderation/users/{id}/moderator"),
    ("GET", "/v1/moderation/audit"),
    ("DELETE", "/v1/me"),
    ("GET", "/v1/me/export"),
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
            "/v1/me" => match *method {
                Method::GET => Ok(Me),
                Method::DELETE => Ok(DeleteAccount),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/me/export" => one(ExportAccount, Method::GET),
            "/v1/me/profile" => one(UpdateProfile, Method::PATCH),
            "/v1/me/preferences" => match *method {
                Method::GET => Ok(GetPreferences),
                Method::PATCH => Ok(UpdatePreferences),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/me/settings" => match *method {
                Method::GET => Ok(GetSettings),
                Method::PATCH => Ok(UpdateSettings),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/me/follow-requests" => one(FollowRequests, Method::GET),
            "/v1/me/blocks" => one(Blocks, Method::GET),
            "/v1/me/mutes" => one(Mutes, Method::GET),
            "/v1/stream" => one(Stream, Method::GET),
            "/v1/conversations" => match *method {
                Method::POST => Ok(CreateConversation),
                Method::GET => Ok(ListConversations),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/admin/emails" => one(AdminEmails, Method::GET),
            "/v1/posts" => one(CreatePost, Method::POST),
            "/v1/timelines/home" => one(HomeTimeline, Method::GET),
            "/wrk2-api/user/register" => one(DsbRegister, Method::POST),
            "/wrk2-api/user/follow" => one(DsbFollow, Method::POST),
            "/wrk2-api/user/unfollow" => one(DsbUnfollow, Method::POST),
            "/wrk2-api/post/compose" => one(DsbCompose, Method::POST),
            "/wrk2-api/user-timeline/read" => one(DsbUserTimeline, Method::GET),
            "/wrk2-api/home-timeline/read" => one(DsbHomeTimeline, Method::GET),
            "/v1/search" => match *method {
                Method::GET => Ok(Search),
                Method::POST => Ok(SearchBody),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/media" => one(MediaUpload, Method::POST),
            "/v1/uploads" => match *method {
                Method::OPTIONS => Ok(TusOptions),
                Method::POST => Ok(TusCreate),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/notifications" => one(Notifications, Method::GET),
            "/v1/notifications/read" => one(NotificationsRead, Method::POST),
            "/v1/notifications/unread_count" => one(NotificationsUnreadCount, Method::GET),
            "/v1/push/vapid_public_key" => one(PushVapidKey, Method::GET),
            "/v1/push/subscriptions" => match *method {
                Method::GET => Ok(PushSubscriptions),
                Method::POST => Ok(PushSubscribe),
                Method::DELETE => Ok(PushUnsubscribe),
                _ => Err(RouteMiss::MethodNotAllowed),
            },
            "/v1/reports" => one(CreateReport, Method::POST),
            "/v1/moderation/reports" => one(ModReports, Method::GET),
            "/v1/moderation/audit" => one(ModAudit, Method::GET),
            _ => Route::find_with_id(method, path),
        }
    }

    fn find_with_id(method: &Method, path: &str) -> Result<Route, RouteMiss> {
        use Route::*;
        let by_method = |get: Option<Route>, post: Option<Route>, delete: Option<Route>| {
            let found = match *method {
                Method::GET => get,
                Method::POST => post,
                Method::DELETE => delete,
                _ => None,
            };
            found.ok_or(RouteMiss::MethodNotAllowed)
        };
        if let Some(rest) = path.strip_prefix("/v1/comments/") {
            let (id, tail) = id_and_tail(rest)?;
            return match (tail, method.clone()) {
                ("", Method::PATCH) => Ok(EditComment(id)),
                ("", Method::DELETE) => Ok(DeleteComment(id)),
                ("", _) => Err(RouteMiss::MethodNotAllowed),
                ("like", _) => by_method(None, Some(LikeComment(id)), Some(UnlikeComment(id))),
                _ => Err(RouteMiss::NotFound),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/conversations/") {
            let (id, tail) = id_and_tail(rest)?;
            return match tail {
                "" => by_method(Some(GetConversation(id)), None, None),
                "messages" => by_method(Some(ListMessages(id)), Some(SendMessage(id)), None),
                "read" => by_method(None, Some(MarkRead(id)), None),
                "typing" => by_method(None, Some(Typing(id)), None),
                "membership" => by_method(None, None, Some(LeaveConversation(id))),
                _ => Err(RouteMiss::NotFound),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/messages/") {
            let id = parse_id(rest)?;
            return match *method {
                Method::PATCH => Ok(EditMessage(id)),
                Method::DELETE => Ok(DeleteMessage(id)),
                _ => Err(RouteMiss::MethodNotAllowed),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/me/follow-requests/") {
            let (id, tail) = rest.split_once('/').ok_or(RouteMiss::NotFound)?;
            let id = parse_id(id)?;
            return match tail {
                "approve" => by_method(None, Some(ApproveFollowRequest(id)), None),
                "reject" => by_method(None, Some(RejectFollowRequest(id)), None),
                _ => Err(RouteMiss::NotFound),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/media/") {
            let (id, name) = id_and_tail(rest)?;
            if name.is_empty() {
                return by_method(Some(GetMedia(id)), None, Some(DeleteMedia(id)));
            }
            if name.contains('/') {
                return Err(RouteMiss::NotFound);
            }
            if *method == Method::HEAD {
                return Ok(MediaFile(id));
            }
            return by_method(Some(MediaFile(id)), None, None);
        }
        if let Some(rest) = path.strip_prefix("/v1/uploads/") {
            let id = parse_id(rest)?;
            return match *method {
                Method::HEAD => Ok(TusHead(id)),
                Method::PATCH => Ok(TusPatch(id)),
                Method::DELETE => Ok(TusDelete(id)),
                _ => Err(RouteMiss::MethodNotAllowed),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/sessions/") {
            let id = parse_id(rest)?;
            return by_method(None, None, Some(RevokeSession(id)));
        }
        if let Some(rest) = path.strip_prefix("/v1/posts/") {
            let (id, tail) = id_and_tail(rest)?;
            return match tail {
                "" if *method == Method::PATCH => Ok(EditPost(id)),
                "" => by_method(Some(GetPost(id)), None, Some(DeletePost(id))),
                "like" => by_method(None, Some(LikePost(id)), Some(UnlikePost(id))),
                "comments" => by_method(Some(ListComments(id)), Some(CreateComment(id)), None),
                _ => Err(RouteMiss::NotFound),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/moderation/") {
            let (kind, rest) = rest.split_once('/').ok_or(RouteMiss::NotFound)?;
            let (id, tail) = id_and_tail(rest)?;
            return match (kind, tail) {
                ("reports", "resolve") => by_method(None, Some(ModResolveReport(id)), None),
                ("posts", "") => by_method(None, None, Some(ModRemovePost(id))),
                ("comments", "") => by_method(None, None, Some(ModRemoveComment(id))),
                ("users", "suspension") => {
                    by_method(None, Some(ModSuspend(id)), Some(ModUnsuspend(id)))
                }
                ("users", "moderator") => by_method(
                    None,
                    Some(ModGrantModerator(id)),
                    Some(ModRevokeModerator(id)),
                ),
                _ => Err(RouteMiss::NotFound),
            };
        }
        if let Some(tag) = path.strip_prefix("/v1/tags/") {
            if tag.is_empty() || tag.contains('/') {
                return Err(RouteMiss::NotFound);
            }
            return by_method(Some(TagPosts), None, None);
        }
        if let Some(rest) = path.strip_prefix("/v1/users/") {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() || name.contains('/') {
                    return Err(RouteMiss::NotFound);
                }
                return by_method(Some(UserByName), None, None);
            }
            let (id, tail) = id_and_tail(rest)?;
            return match tail {
                "" => by_method(Some(UserById(id)), None, None),
                "follow" => by_method(None, Some(Follow(id)), Some(Unfollow(id))),
                "block" => by_method(None, Some(Block(id)), Some(Unblock(id))),
                "mute" => by_method(None, Some(Mute(id)), Some(Unmute(id))),
                "followers" => by_method(Some(Followers(id)), None, None),
                "following" => by_method(Some(Following(id)), None, None),
                "posts" => by_method(Some(UserPosts(id)), None, None),
                _ => Err(RouteMiss::NotFound),
            };
        }
        Err(RouteMiss::NotFound)
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
            UserById(_) => "/v1/users/{id}",
            UserByName => "/v1/users/@{username}",
            Follow(_) | Unfollow(_) => "/v1/users/{id}/follow",
            Followers(_) => "/v1/users/{id}/followers",
            Following(_) => "/v1/users/{id}/following",
            Block(_) | Unblock(_) => "/v1/users/{id}/block",
            Mute(_) | Unmute(_) => "/v1/users/{id}/mute",
            UserPosts(_) => "/v1/users/{id}/posts",
            CreatePost => "/v1/posts",
            GetPost(_) | DeletePost(_) => "/v1/posts/{id}",
            HomeTimeline => "/v1/timelines/home",
            UpdateProfile => "/v1/me/profile",
            GetPreferences | UpdatePreferences => "/v1/me/preferences",
            LikePost(_) | UnlikePost(_) => "/v1/posts/{id}/like",
            ListComments(_) | CreateComment(_) => "/v1/posts/{id}/comments",
            EditComment(_) | DeleteComment(_) => "/v1/comments/{id}",
            LikeComment(_) | UnlikeComment(_) => "/v1/comments/{id}/like",
            EditPost(_) => "/v1/posts/{id}",
            GetSettings | UpdateSettings => "/v1/me/settings",
            FollowRequests => "/v1/me/follow-requests",
            Blocks => "/v1/me/blocks",
            Mutes => "/v1/me/mutes",
            ApproveFollowRequest(_) => "/v1/me/follow-requests/{id}/approve",
            RejectFollowRequest(_) => "/v1/me/follow-requests/{id}/reject",
            Stream => "/v1/stream",
            CreateConversation | ListConversations => "/v1/conversations",
            GetConversation(_) => "/v1/conversations/{id}",
            ListMessages(_) | SendMessage(_) => "/v1/conversations/{id}/messages",
            MarkRead(_) => "/v1/conversations/{id}/read",
            Typing(_) => "/v1/conversations/{id}/typing",
            LeaveConversation(_) => "/v1/conversations/{id}/membership",
            EditMessage(_) | DeleteMessage(_) => "/v1/messages/{id}",
            DsbRegister => "/wrk2-api/user/register",
            DsbFollow => "/wrk2-api/user/follow",
            DsbUnfollow => "/wrk2-api/user/unfollow",
            DsbCompose => "/wrk2-api/post/compose",
            DsbUserTimeline => "/wrk2-api/user-timeline/read",
            DsbHomeTimeline => "/wrk2-api/home-timeline/read",
            MediaUpload => "/v1/media",
            GetMedia(_) | DeleteMedia(_) => "/v1/media/{id}",
            MediaFile(_) => "/v1/media/{id}/{name}",
            TusOptions | TusCreate => "/v1/uploads",
            TusHead(_) | TusPatch(_) | TusDelete(_) => "/v1/uploads/{id}",
            Notifications => "/v1/notifications",
            NotificationsRead => "/v1/notifications/read",
            NotificationsUnreadCount => "/v1/notifications/unread_count",
            PushVapidKey => "/v1/push/vapid_public_key",
            PushSubscriptions | PushSubscribe | PushUnsubscribe => "/v1/push/subscriptions",
            Search | SearchBody => "/v1/search",
            TagPosts => "/v1/tags/{tag}",
            CreateReport => "/v1/reports",
            ModReports => "/v1/moderation/reports",
            ModResolveReport(_) => "/v1/moderation/reports/{id}/resolve",
            ModRemovePost(_) => "/v1/moderation/posts/{id}",
            ModRemoveComment(_) => "/v1/moderation/comments/{id}",
            ModSuspend(_) | ModUnsuspend(_) => "/v1/moderation/users/{id}/suspension",
            ModGrantModerator(_) | ModRevokeModerator(_) => "/v1/moderation/users/{id}/moderator",
            ModAudit => "/v1/moderation/audit",
            DeleteAccount => "/v1/me",
            ExportAccount => "/v1/me/export",
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
            let path = template.replace("{id}", "123").replace("{username}", "bob");
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

    #[test]
    fn ids_are_digits_and_a_trailing_slash_is_no_route() {
        for (method, template) in ROUTES {
            if !template.contains("{id}") {
                continue;
            }
            let method: Method = method.parse().unwrap();
            for id in ["+123", "-1", " 1", "1 ", "0x1", "", "18446744073709551616"] {
                let path = template.replace("{id}", id).replace("{name}", "a.jpg");
                assert_eq!(
                    Route::find(&method, &path),
                    Err(RouteMiss::NotFound),
                    "{method} {path}"
                );
            }
            let path = template.replace("{id}", "123").replace("{name}", "a.jpg");
            assert_eq!(
                Route::find(&method, &format!("{path}/")),
                Err(RouteMiss::NotFound),
                "{method} {path}/"
            );
        }
        assert_eq!(
            Route::find(&Method::GET, "/v1/posts/18446744073709551615").map(|r| r.template()),
            Ok("/v1/posts/{id}")
        );
    }
}
