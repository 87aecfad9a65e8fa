//! The state shared by every request handler: the live routes with their
//! inbound rate limiters, the store, metrics and the worker's wake-up.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::dispatch::DispatcherHandle;
use crate::secret::Secret;
use crate::store::Store;
use crate::telemetry::Metrics;

/// The configuration in force, indexed for the request path.
pub struct LiveRoutes {
    pub config: Arc<Config>,
    by_id: HashMap<String, usize>,
    limiters: Vec<Option<Arc<DefaultDirectRateLimiter>>>,
}

impl LiveRoutes {
    pub fn new(config: Arc<Config>) -> LiveRoutes {
        let by_id = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                let limit = r.rate_limit.as_ref()?;
                let per_second = NonZeroU32::new(limit.per_second)?;
                let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
                Some(Arc::new(RateLimiter::direct(
                    Quota::per_second(per_second).allow_burst(burst),
                )))
            })
            .collect();
        LiveRoutes {
            config,
            by_id,
            limiters,
        }
    }

    pub fn route(&self, id: &str) -> Option<(usize, &crate::config::Route)> {
        let index = *self.by_id.get(id)?;
        Some((index, &self.config.routes[index]))
    }

    pub fn limiter(&self, index: usize) -> Option<&DefaultDirectRateLimiter> {
        self.limiters.get(index).and_then(|l| l.as_deref())
    }
}

/// Shared by all handlers through `web::Data`.
pub struct AppState {
    routes: RwLock<Arc<LiveRoutes>>,
    pub store: Store,
    pub metrics: Metrics,
    pub dispatcher: DispatcherHandle,
    pub admin_token: Option<Secret>,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        metrics: Metrics,
        dispatcher: DispatcherHandle,
        admin_token: Option<Secret>,
    ) -> AppState {
        for route in &config.routes {
            metrics.init_route(&route.id);
        }
        AppState {
            routes: RwLock::new(Arc::new(LiveRoutes::new(config))),
            store,
            metrics,
            dispatcher,
            admin_token,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The routes in force; a reload swaps them atomically, and a request
    /// keeps the snapshot it started with.
    pub fn routes(&self) -> Arc<LiveRoutes> {
        self.routes.read().expect("routes lock").clone()
    }

    pub fn replace_routes(&self, config: Arc<Config>) {
        for route in &config.routes {
            self.metrics.init_route(&route.id);
        }
        *self.routes.write().expect("routes lock") = Arc::new(LiveRoutes::new(config));
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
