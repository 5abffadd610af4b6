//! JSON Web Tokens as Envoy's `jwt_authn` filter checks them: parsing and time checks
//! (`token`), key sets and signatures (`jwks`), key sets fetched from a cluster
//! (`remote`), and jwt_verify_lib's status words (`status`).

pub mod jwks;
pub mod remote;
pub mod status;
pub mod token;

pub use status::Status;
