//! How the operator's caches key the compact objects they keep in place of API objects
//! (`core::pod::CachedPod`, `record::CachedRecord`): by namespace and name, as kube keys its
//! own.

/// Implements kube's `Lookup` for a cached form of a core/v1 object: `kind`, `plural`, and
/// the expressions (over `$this`) giving its name and namespace as `&str`. The resource
/// version and uid are not part of the key and are not kept.
macro_rules! core_v1_lookup {
    ($ty:ty, $kind:literal, $plural:literal, |$this:ident| ($name:expr, $namespace:expr)) => {
        impl kube::runtime::reflector::Lookup for $ty {
            type DynamicType = ();

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }

            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                "".into()
            }

            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }

            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }

            fn name(&self) -> Option<std::borrow::Cow<'_, str>> {
                let $this = self;
                Some(std::borrow::Cow::Borrowed($name))
            }

            fn namespace(&self) -> Option<std::borrow::Cow<'_, str>> {
                let $this = self;
                Some(std::borrow::Cow::Borrowed($namespace))
            }

            fn resource_version(&self) -> Option<std::borrow::Cow<'_, str>> {
                None
            }

            fn uid(&self) -> Option<std::borrow::Cow<'_, str>> {
                None
            }
        }
    };
}

pub(crate) use core_v1_lookup;
