//! `#[derive(ShmSafe)]`: put your own struct in shared memory without writing `unsafe`.
//!
//! Use it through `ipc_shm` (feature `derive`, on by default), where the derive and the trait
//! share one name, as serde's do: `use ipc_shm::ShmSafe;` then `#[derive(ShmSafe)]`.
//!
//! The derive writes the `unsafe impl ipc_shm::ShmSafe` for you only when it can check every
//! point of the trait's safety contract, and refuses at compile time otherwise:
//!
//! | contract point | what the derive checks |
//! |---|---|
//! | 1. defined layout | `#[repr(C)]` or `#[repr(transparent)]` present; `repr(packed)` refused; only structs (enums and unions refused) |
//! | 2. no pointers or references | every field's type is `ShmSafe` (raw pointers, `&T`, `Box`, `Vec`, `String` are not); no lifetime parameters |
//! | 3. any bit pattern valid, all-zero included | every field's type is `ShmSafe`, so every field is; padding bytes carry no value |
//! | 4. shared mutation through atomics | every field's type is `ShmSafe`, so each field upholds it |
//! | 5. no `Drop` logic | the type must not implement `Drop` |
//!
//! Type parameters get a `T: ShmSafe` bound on the generated impl, so `Pair<T>` is `ShmSafe`
//! exactly when `T` is. Const parameters are allowed (arrays).
//!
//! The code you write stays free of `unsafe`: the derive builds in a crate under
//! `#![forbid(unsafe_code)]` and clippy's `undocumented_unsafe_blocks` (neither fires on the
//! impl a derive generates; its safety argument is this crate's checks, stated above).
//!
//! **Padding is allowed.** The contract asks that any bit pattern be a valid value, and padding
//! bytes are never read as part of a value: `ipc_shm` only hands out `&T` into a segment (never
//! copies a `T` into or out of it), and code reads and writes through that reference field by
//! field. So a struct with a `u8` field followed by an `AtomicU64` is fine; the seven bytes
//! between them are simply unused shared bytes.
//!
//! `repr(packed)` is refused outright: it misaligns atomics (a reference to a misaligned atomic
//! is undefined behaviour, and Rust refuses to form references to packed fields), and a packed
//! struct whose fields all have alignment 1 gains nothing from it. `repr(align(N))` may be added
//! to `repr(C)` (for example to give a hot counter its own cache line); `ipc_shm::Layout` accepts
//! alignments up to 128.
//!
//! `#[shm_safe(crate = "path::to::ipc_shm")]` names the `ipc_shm` crate when it is not a direct
//! dependency under that name (for example when reached through a re-export).
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
//! use ipc_shm::{Layout, SegmentBuilder, ShmSafe};
//!
//! #[derive(ShmSafe)]
//! #[repr(C)]
//! struct Stats {
//!     requests: AtomicU64,
//!     errors: AtomicU64,
//!     last_status: [AtomicU32; 4],
//! }
//!
//! let mut layout = Layout::new();
//! let stats = layout.add::<Stats>()?; // only ShmSafe types can be placed
//! let segment = SegmentBuilder::new(layout.size()).create()?; // zero-filled: all counters 0
//! segment.get(stats)?.requests.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(segment.get(stats)?.requests.load(Ordering::Relaxed), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A field that cannot live in shared memory is a compile error that names the field:
//!
//! ```compile_fail
//! use ipc_shm::ShmSafe;
//!
//! #[derive(ShmSafe)]
//! #[repr(C)]
//! struct Bad {
//!     name: String, // a heap pointer: meaningless in another process
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, GenericParam, Path, parse_macro_input, parse_quote};

/// Derives `ipc_shm::ShmSafe` for a `#[repr(C)]` (or `#[repr(transparent)]`) struct whose
/// fields are all `ShmSafe`, and refuses at compile time anything that would break the trait's
/// safety contract: a missing or packed `repr`, enums, unions, lifetime parameters, a `Drop`
/// impl, and any field whose type is not `ShmSafe` (raw pointers, references, `Box`, `Vec`,
/// `String`, `bool`, ...).
///
/// See the [crate documentation](crate) for the rules, why padding is allowed, and an example;
/// `ipc_shm::ShmSafe` has an example with a lock and counters placed in a segment.
#[proc_macro_derive(ShmSafe, attributes(shm_safe))]
pub fn derive_shm_safe(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

fn expand(input: DeriveInput) -> Result<TokenStream2, Error> {
    let krate = crate_path(&input)?;
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        Data::Enum(e) => {
            return Err(Error::new(
                e.enum_token.span(),
                "ShmSafe cannot be derived for an enum: another process can write a \
                 discriminant that names no variant, and every bit pattern must be a valid \
                 value; store the discriminant as an integer (e.g. AtomicU32) and decode it \
                 with a check",
            ));
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span(),
                "ShmSafe cannot be derived for a union: use a struct, or a byte array \
                 (e.g. [u8; N]) that you decode with bounds checks",
            ));
        }
    };
    check_repr(&input)?;

    let mut generics = input.generics.clone();
    for param in &generics.params {
        if let GenericParam::Lifetime(l) = param {
            return Err(Error::new(
                l.span(),
                "ShmSafe types hold no references, so they take no lifetime parameters \
                 (ShmSafe requires 'static)",
            ));
        }
    }
    // Every type parameter must itself be ShmSafe for a field of that type to be.
    let type_params: Vec<_> = generics.type_params().map(|t| t.ident.clone()).collect();
    {
        let where_clause = generics.make_where_clause();
        for t in &type_params {
            where_clause
                .predicates
                .push(parse_quote!(#t: #krate::ShmSafe));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let name = &input.ident;

    // One assertion per field, spanned at the field's type so the error points at it.
    let field_checks = fields.iter().map(|f| {
        let ty = &f.ty;
        quote_spanned! {ty.span()=> __ipc_shm_derive_field_is_shm_safe::<#ty>(); }
    });

    Ok(quote! {
        // Compile-time checks, in an anonymous const so that nothing leaks into the user's
        // namespace. A function body is type-checked even though nothing calls it.
        const _: () = {
            fn __ipc_shm_derive_field_is_shm_safe<T: #krate::ShmSafe>() {}

            #[allow(dead_code, clippy::extra_unused_type_parameters)]
            fn __ipc_shm_derive_fields #impl_generics () #where_clause {
                #(#field_checks)*
            }

            // Contract point 5 (no Drop logic): a type that implements Drop conflicts with
            // the blanket impl below ("conflicting implementations of trait
            // `ShmSafeTypesMustNotImplementDrop`").
            trait ShmSafeTypesMustNotImplementDrop {}
            #[allow(drop_bounds)]
            impl<T: ::core::ops::Drop + ?::core::marker::Sized> ShmSafeTypesMustNotImplementDrop
                for T {}
            impl #impl_generics ShmSafeTypesMustNotImplementDrop for #name #ty_generics
                #where_clause {}
        };

        // SAFETY (checked by the derive, see ipc_shm_derive's crate docs): the struct is
        // repr(C) or repr(transparent) and not packed (1); every field is ShmSafe, so none
        // holds an address (2), every bit pattern of every field is valid and padding carries
        // no value (3), and every field mutates only through atomics (4); the type does not
        // implement Drop (5). Sync + 'static follow from the fields and the absence of
        // lifetime parameters, and are checked by the supertrait bound.
        #[automatically_derived]
        unsafe impl #impl_generics #krate::ShmSafe for #name #ty_generics #where_clause {}
    })
}

/// The path of the `ipc_shm` crate: `::ipc_shm`, or `#[shm_safe(crate = "...")]`.
fn crate_path(input: &DeriveInput) -> Result<Path, Error> {
    let mut path: Path = parse_quote!(::ipc_shm);
    for attr in &input.attrs {
        if !attr.path().is_ident("shm_safe") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let lit: syn::LitStr = meta.value()?.parse()?;
                path = lit.parse()?;
                Ok(())
            } else {
                Err(meta.error("unknown shm_safe option; the only one is `crate = \"path\"`"))
            }
        })?;
    }
    Ok(path)
}

/// Contract point 1: `repr(C)` or `repr(transparent)`, and never `packed`.
fn check_repr(input: &DeriveInput) -> Result<(), Error> {
    let mut defined = false;
    for attr in &input.attrs {
        if !attr.path().is_ident("repr") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("C") || meta.path.is_ident("transparent") {
                defined = true;
            } else if meta.path.is_ident("packed") {
                return Err(meta.error(
                    "ShmSafe cannot be derived for a repr(packed) struct: packing misaligns \
                     atomics, and a reference to a misaligned atomic is undefined behaviour; \
                     remove `packed` (padding is allowed)",
                ));
            }
            // align(N) and anything else: consume its arguments, if any.
            if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<TokenStream2>()?;
            }
            Ok(())
        })?;
    }
    if defined {
        Ok(())
    } else {
        Err(Error::new(
            Span::call_site(),
            format!(
                "ShmSafe needs #[repr(C)] (or #[repr(transparent)]) on `{}`: every process \
                 must see the same field offsets, and Rust's default layout does not promise \
                 that",
                input.ident
            ),
        ))
    }
}

// The README's code blocks, compiled and run as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
