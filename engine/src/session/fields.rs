//! The handle's field access: reads decode from the loaded bytes, writes stay in memory until
//! the commit, which sends only the fields that changed.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use super::Session;
use crate::{
    error::{Error, ErrorKind, Result},
    record::{decode_value, encode_value, is_reserved},
};

impl Session {
    /// The value of `field`, decoded as `T`; `None` when absent. The first access of a request
    /// loads the session (one store read; none at all with a near-cache hit).
    ///
    /// # Errors
    ///
    /// The load's error, or [`ErrorKind::Decode`] when the stored value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>> {
        let st = self.loaded().await?;
        st.data
            .get(field)
            .map(|bytes| decode_value(field, bytes))
            .transpose()
    }

    /// Sets `field` to `value`. Setting a value equal to the stored one is no change.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidField`] for a name the engine reserves, [`ErrorKind::Encode`] when
    /// `value` has no MessagePack form, or the load's error.
    pub async fn insert<T: Serialize + ?Sized>(
        &self,
        field: impl Into<String>,
        value: &T,
    ) -> Result<()> {
        let field = checked_name(field.into())?;
        let bytes = self.encoded(&field, value)?;
        let mut st = self.loaded().await?;
        st.remember(&field);
        st.data.insert(field, bytes);
        self.publish(&st);
        Ok(())
    }

    /// Removes `field` and returns its value, decoded as `T` (`None` when absent): the read
    /// half of a flash message. The field is removed even when it does not decode as `T`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let session = engine.session(None);
    /// session.insert("flash", "saved").await?;
    /// assert_eq!(session.remove::<String>("flash").await?.as_deref(), Some("saved"));
    /// assert_eq!(session.remove::<String>("flash").await?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The load's error, or [`ErrorKind::Decode`] when the value is not a `T`.
    pub async fn remove<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>> {
        let mut st = self.loaded().await?;
        st.remember(field);
        let removed = st.data.remove(field);
        self.publish(&st);
        removed.map(|bytes| decode_value(field, &bytes)).transpose()
    }

    /// [`Session::remove`] under the name flash messages use: read a value once.
    ///
    /// # Errors
    ///
    /// As [`Session::remove`].
    pub async fn take<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>> {
        self.remove(field).await
    }

    /// Changes the value of `field` in place: `f` gets the current value (`T::default()` when
    /// absent) and the result is stored, then returned. Reading and writing happen under the
    /// handle's lock, so clones of the handle in concurrent tasks of one request each see the
    /// other's change; across requests the commit's rules apply as for [`Session::insert`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let session = engine.session(None);
    /// assert_eq!(session.update("views", |n: &mut u64| *n += 1).await?, 1);
    /// assert_eq!(session.update("views", |n: &mut u64| *n += 1).await?, 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Session::get`] and [`Session::insert`]; on an error nothing changes.
    pub async fn update<T, F>(&self, field: impl Into<String>, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Default,
        F: FnOnce(&mut T),
    {
        let field = checked_name(field.into())?;
        let mut st = self.loaded().await?;
        let mut value = match st.data.get(&field) {
            Some(bytes) => decode_value(&field, bytes)?,
            None => T::default(),
        };
        f(&mut value);
        let bytes = self.encoded(&field, &value)?;
        st.remember(&field);
        st.data.insert(field, bytes);
        self.publish(&st);
        Ok(value)
    }

    /// The value of `field`, inserting `f()` first when it is absent.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> tessera_engine::Result<()> {
    /// use tessera_engine::{MemoryStore, SessionConfig, SessionEngine};
    ///
    /// let engine = SessionEngine::new(MemoryStore::new(), SessionConfig::default())?;
    /// let session = engine.session(None);
    /// let theme: String = session.get_or_insert_with("theme", || "light".into()).await?;
    /// assert_eq!(theme, "light");
    /// session.insert("theme", "dark").await?;
    /// let theme: String = session.get_or_insert_with("theme", || "light".into()).await?;
    /// assert_eq!(theme, "dark");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Session::get`] and [`Session::insert`]; on an error nothing changes.
    pub async fn get_or_insert_with<T, F>(&self, field: impl Into<String>, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        let field = checked_name(field.into())?;
        let mut st = self.loaded().await?;
        if let Some(bytes) = st.data.get(&field) {
            return decode_value(&field, bytes);
        }
        let value = f();
        let bytes = self.encoded(&field, &value)?;
        st.remember(&field);
        st.data.insert(field, bytes);
        self.publish(&st);
        Ok(value)
    }

    /// Removes every field; the session itself stays (see [`Session::destroy`]).
    ///
    /// # Errors
    ///
    /// The load's error.
    pub async fn clear(&self) -> Result<()> {
        let mut st = self.loaded().await?;
        let keys: Vec<String> = st.data.keys().cloned().collect();
        for key in &keys {
            st.remember(key);
        }
        st.data.clear();
        self.publish(&st);
        Ok(())
    }

    /// The field names, in no particular order.
    ///
    /// # Errors
    ///
    /// The load's error.
    pub async fn keys(&self) -> Result<Vec<String>> {
        Ok(self.loaded().await?.data.keys().cloned().collect())
    }

    /// Whether the session has no fields.
    ///
    /// # Errors
    ///
    /// The load's error.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.loaded().await?.data.is_empty())
    }

    /// `value` encoded, once the store has accepted it for `field` (the koa profile refuses
    /// what Node cannot read back).
    fn encoded<T: Serialize + ?Sized>(&self, field: &str, value: &T) -> Result<Bytes> {
        let bytes = encode_value(value)?;
        self.engine.inner.store.check_field(field, &bytes)?;
        Ok(bytes)
    }
}

/// `field` when it is not a name the engine reserves.
fn checked_name(field: String) -> Result<String> {
    if is_reserved(&field) {
        return Err(Error::new(
            ErrorKind::InvalidField,
            format!("the field name {field:?} is reserved by the engine; use another"),
        ));
    }
    Ok(field)
}

#[cfg(test)]
mod tests {
    use crate::{ErrorKind, MemoryStore, SessionConfig, SessionEngine};

    fn engine() -> SessionEngine {
        SessionEngine::new(MemoryStore::new(), SessionConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn update_starts_from_the_default_and_stores_what_it_made() {
        let engine = engine();
        let s = engine.session(None);
        let cart = s
            .update("cart", |c: &mut Vec<String>| c.push("tea".into()))
            .await
            .unwrap();
        assert_eq!(cart, ["tea"]);
        let committed = s.commit().await.unwrap();
        let id = match committed.cookie {
            crate::CookieAction::Set { id, .. } => id,
            other => panic!("{other:?}"),
        };
        let later = engine.session(Some(id));
        let cart = later
            .update("cart", |c: &mut Vec<String>| c.push("milk".into()))
            .await
            .unwrap();
        assert_eq!(cart, ["tea", "milk"]);
        assert_eq!(later.commit().await.unwrap().writes, 1);
    }

    #[tokio::test]
    async fn a_value_of_another_type_is_an_error_and_stays() {
        let s = engine().session(None);
        s.insert("n", "not a number").await.unwrap();
        let err = s.update("n", |n: &mut u64| *n += 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        let err = s.get_or_insert_with("n", || 0u64).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!(
            s.get::<String>("n").await.unwrap().as_deref(),
            Some("not a number")
        );
    }

    #[tokio::test]
    async fn reserved_names_are_refused_by_every_writer() {
        let s = engine().session(None);
        let name = crate::record::META_FIELD;
        for err in [
            s.insert(name, &1u8).await.unwrap_err(),
            s.update(name, |n: &mut u8| *n += 1).await.unwrap_err(),
            s.get_or_insert_with(name, || 1u8).await.unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::InvalidField);
        }
        assert!(s.is_empty().await.unwrap());
    }
}
