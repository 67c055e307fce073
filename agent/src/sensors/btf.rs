//! A small reader for the running kernel's BTF, used to find kernel struct field offsets.
//!
//! The kernel-side programs are written in Rust (aya-ebpf), which has no CO-RE relocations for
//! kernel structs read by hand. So at start-up user space reads the kernel's own type
//! information (`/sys/kernel/btf/vmlinux`), computes the byte offsets of the fields the programs
//! need, and writes them into the programs as load-time constants ([`kernel_offsets`]). One
//! object file then works on many kernels, whatever their struct layout (including randomized
//! layouts, where fields move into anonymous structs).
//!
//! aya parses BTF too, but does not expose member lookup publicly, hence this self-contained
//! parser. It follows the kernel's "BPF Type Format" document: a header, a type section and a
//! string section. Only little-endian BTF is supported. Every read is bounds-checked: malformed
//! or truncated input gives a [`BtfError`], never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use custos_ebpf::KernelOffsets;

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Size of the header fields we know; `hdr_len` may be larger (newer formats), never smaller.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const TYPE_HEADER_LEN: usize = 12;
/// Size of `struct btf_member`.
const MEMBER_LEN: usize = 12;
/// Longest chain of typedefs/modifiers, or deepest nesting of anonymous members, we follow.
/// Real kernels need a handful; the limit only stops loops in malformed input.
const MAX_DEPTH: usize = 64;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_INT => "int",
        KIND_PTR => "pointer",
        KIND_ARRAY => "array",
        KIND_STRUCT => "struct",
        KIND_UNION => "union",
        KIND_ENUM => "enum",
        KIND_FWD => "forward declaration",
        KIND_TYPEDEF => "typedef",
        KIND_VOLATILE => "volatile",
        KIND_CONST => "const",
        KIND_RESTRICT => "restrict",
        KIND_FUNC => "function",
        KIND_FUNC_PROTO => "function prototype",
        KIND_VAR => "variable",
        KIND_DATASEC => "data section",
        KIND_FLOAT => "float",
        KIND_DECL_TAG => "declaration tag",
        KIND_TYPE_TAG => "type tag",
        KIND_ENUM64 => "enum64",
        _ => "unknown kind",
    }
}

/// Why BTF could not be read, or a field not resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF data truncated: {what} needs {needed} bytes, only {len} available")]
    Truncated {
        what: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("not BTF data: magic is {found:#06x}, expected {BTF_MAGIC:#06x}")]
    BadMagic { found: u16 },
    #[error("BTF data is big-endian; only little-endian BTF is supported")]
    BigEndian,
    #[error("unsupported BTF version {version} (only version {BTF_VERSION} is known)")]
    UnsupportedVersion { version: u8 },
    #[error("BTF header length {hdr_len} is shorter than the {HEADER_LEN}-byte minimum")]
    BadHeaderLength { hdr_len: u32 },
    #[error("BTF {section} section (bytes {start}..{end}) lies outside the {len}-byte data")]
    SectionOutOfBounds {
        section: &'static str,
        start: u64,
        end: u64,
        len: usize,
    },
    #[error("BTF type [{type_id}] at byte {offset} runs past the end of the type section")]
    TypeTruncated { type_id: u32, offset: usize },
    #[error("BTF type [{type_id}] has unknown kind {kind}")]
    UnknownKind { type_id: u32, kind: u32 },
    #[error("BTF string offset {offset} is outside the string section or not NUL-terminated UTF-8")]
    BadString { offset: u32 },
    #[error("BTF refers to type [{type_id}], which does not exist")]
    BadTypeId { type_id: u32 },
    #[error("BTF type chain from [{type_id}] is longer than {MAX_DEPTH} (a loop?)")]
    TooDeep { type_id: u32 },
    #[error("kernel BTF has no struct or union named `{struct_name}`")]
    StructNotFound { struct_name: String },
    #[error("unexpected kernel struct layout: {what}")]
    UnexpectedLayout { what: String },
    #[error(
        "invalid field path {path:?} for struct `{struct_name}`: it must be non-empty, with no empty segments"
    )]
    InvalidPath {
        struct_name: String,
        path: Vec<String>,
    },
    #[error("struct `{struct_name}` has no field `{field}` (no member `{missing}` in {container})")]
    FieldNotFound {
        struct_name: String,
        /// The path up to and including the missing segment, dot-separated.
        field: String,
        /// The missing segment.
        missing: String,
        /// The struct or union that was searched, e.g. `struct path`.
        container: String,
    },
    #[error(
        "cannot look inside `{struct_name}.{field}`: it is a {kind}, not an embedded struct or union (pointers are not followed)"
    )]
    NotAStruct {
        struct_name: String,
        field: String,
        kind: &'static str,
    },
    #[error("`{struct_name}.{field}` is a bitfield; only whole fields can be read")]
    Bitfield { struct_name: String, field: String },
    #[error("`{struct_name}.{field}` starts at bit {bit_offset}, which is not byte-aligned")]
    Unaligned {
        struct_name: String,
        field: String,
        bit_offset: u64,
    },
    #[error("`{struct_name}.{field}` lies beyond 4 GiB (bit offset {bit_offset})")]
    OffsetTooLarge {
        struct_name: String,
        field: String,
        bit_offset: u64,
    },
    #[error(
        "kernel BTF has several `{struct_name}` types placing `{field}` at different offsets ({first} and {second})"
    )]
    Ambiguous {
        struct_name: String,
        field: String,
        first: u32,
        second: u32,
    },
    #[error("`{struct_name}.{field}` is a {found}, expected {expected}")]
    UnexpectedFieldType {
        struct_name: String,
        field: String,
        expected: &'static str,
        found: String,
    },
}

/// One entry of the type section, with its kind-specific data left in the raw bytes.
#[derive(Clone, Copy, Debug)]
struct RawType {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Byte offset (in `KernelBtf::data`) of the kind-specific data after the type header.
    data: usize,
}

impl RawType {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

/// A struct or union member found by name, with its offset from the outer type's start.
#[derive(Clone, Copy, Debug)]
struct Member {
    bit_offset: u64,
    bitfield_size: u32,
    type_id: u32,
}

/// A resolved field: where it is and what type it has.
#[derive(Clone, Copy, Debug)]
struct ResolvedField {
    byte_offset: u32,
    type_id: u32,
}

/// The running kernel's BTF, parsed and indexed for field lookups.
pub struct KernelBtf {
    data: Vec<u8>,
    /// Byte range of the string section in `data`.
    strings: std::ops::Range<usize>,
    /// Types by id: `types[id - 1]` (id 0 is `void`).
    types: Vec<RawType>,
    /// Named structs and unions, by name. Names are normally unique, but the kernel's BTF has a
    /// few duplicates (distinct local types in different compilation units).
    structs: HashMap<String, Vec<u32>>,
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("bytes", &self.data.len())
            .field("types", &self.types.len())
            .field("named_structs", &self.structs.len())
            .finish()
    }
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl KernelBtf {
    /// Reads and parses the running kernel's BTF from [`VMLINUX_BTF_PATH`].
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_path(Path::new(VMLINUX_BTF_PATH))
    }

    /// Reads and parses raw BTF (as in `/sys/kernel/btf/vmlinux`) from a file.
    pub fn from_path(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes)
    }

    /// Parses raw BTF bytes: validates the header and sections, walks every type, and indexes
    /// named structs and unions.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, BtfError> {
        let magic = read_u16(&bytes, 0).ok_or(BtfError::Truncated {
            what: "BTF magic",
            needed: 2,
            len: bytes.len(),
        })?;
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(BtfError::BigEndian);
        }
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        if bytes.len() < HEADER_LEN {
            return Err(BtfError::Truncated {
                what: "BTF header",
                needed: HEADER_LEN,
                len: bytes.len(),
            });
        }
        let version = bytes[2];
        if version != BTF_VERSION {
            return Err(BtfError::UnsupportedVersion { version });
        }
        let header_u32 = |at: usize| read_u32(&bytes, at).unwrap_or_default();
        let hdr_len = header_u32(4);
        if (hdr_len as usize) < HEADER_LEN {
            return Err(BtfError::BadHeaderLength { hdr_len });
        }
        let section = |section: &'static str, off: u32, len: u32| {
            let start = u64::from(hdr_len) + u64::from(off);
            let end = start + u64::from(len);
            if end > bytes.len() as u64 {
                Err(BtfError::SectionOutOfBounds {
                    section,
                    start,
                    end,
                    len: bytes.len(),
                })
            } else {
                // Both fit in usize: they are at most `bytes.len()`.
                Ok(start as usize..end as usize)
            }
        };
        let type_range = section("type", header_u32(8), header_u32(12))?;
        let strings = section("string", header_u32(16), header_u32(20))?;

        let types = parse_types(&bytes, type_range)?;
        let mut btf = KernelBtf {
            data: bytes,
            strings,
            types,
            structs: HashMap::new(),
        };
        btf.index_structs()?;
        Ok(btf)
    }

    fn index_structs(&mut self) -> Result<(), BtfError> {
        let mut structs: HashMap<String, Vec<u32>> = HashMap::new();
        for (index, ty) in self.types.iter().enumerate() {
            if !matches!(ty.kind(), KIND_STRUCT | KIND_UNION) || ty.name_off == 0 {
                continue;
            }
            let name = self.string(ty.name_off)?;
            if name.is_empty() {
                continue;
            }
            // `index + 1` fits in u32: parse_types stops at u32::MAX types.
            let id = index as u32 + 1;
            match structs.get_mut(name) {
                Some(ids) => ids.push(id),
                None => {
                    structs.insert(name.to_owned(), vec![id]);
                }
            }
        }
        self.structs = structs;
        Ok(())
    }

    /// Byte offset of a (possibly nested) field, e.g. `("task_struct", &["real_parent"])` or
    /// `("file", &["f_path", "dentry"])`.
    ///
    /// Members of anonymous structs and unions are found as if they were direct members (as in
    /// C), wherever the kernel's layout puts them. Each segment but the last must be an embedded
    /// struct or union (typedefs and const/volatile are looked through); pointers are not
    /// followed, since the target lives elsewhere in memory. Bitfields and fields that do not
    /// start on a byte boundary are refused.
    pub fn field_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        Ok(self.resolve_field(struct_name, path)?.byte_offset)
    }

    fn resolve_field(&self, struct_name: &str, path: &[&str]) -> Result<ResolvedField, BtfError> {
        if path.is_empty() || path.iter().any(|segment| segment.is_empty()) {
            return Err(BtfError::InvalidPath {
                struct_name: struct_name.to_owned(),
                path: path.iter().map(|s| (*s).to_owned()).collect(),
            });
        }
        let candidates = self
            .structs
            .get(struct_name)
            .ok_or_else(|| BtfError::StructNotFound {
                struct_name: struct_name.to_owned(),
            })?;
        let mut found: Option<ResolvedField> = None;
        let mut first_error = None;
        for &id in candidates {
            match self.resolve_in(id, struct_name, path) {
                Ok(field) => match found {
                    None => found = Some(field),
                    Some(previous) if previous.byte_offset != field.byte_offset => {
                        return Err(BtfError::Ambiguous {
                            struct_name: struct_name.to_owned(),
                            field: path.join("."),
                            first: previous.byte_offset,
                            second: field.byte_offset,
                        });
                    }
                    Some(_) => {}
                },
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match (found, first_error) {
            (Some(field), _) => Ok(field),
            (None, Some(error)) => Err(error),
            // The index never holds an empty list.
            (None, None) => Err(BtfError::StructNotFound {
                struct_name: struct_name.to_owned(),
            }),
        }
    }

    fn resolve_in(
        &self,
        struct_id: u32,
        struct_name: &str,
        path: &[&str],
    ) -> Result<ResolvedField, BtfError> {
        let mut container = struct_id;
        let mut bit_offset: u64 = 0;
        let mut type_id = struct_id;
        for (i, segment) in path.iter().enumerate() {
            if i > 0 {
                let inner = self.skip_modifiers(type_id)?;
                let kind = self.kind_of(inner)?;
                if !matches!(kind, KIND_STRUCT | KIND_UNION) {
                    return Err(BtfError::NotAStruct {
                        struct_name: struct_name.to_owned(),
                        field: path[..i].join("."),
                        kind: if inner == 0 { "void" } else { kind_name(kind) },
                    });
                }
                container = inner;
            }
            let member = self.find_member(container, segment, 0)?.ok_or_else(|| {
                BtfError::FieldNotFound {
                    struct_name: struct_name.to_owned(),
                    field: path[..=i].join("."),
                    missing: (*segment).to_owned(),
                    container: self.describe(container),
                }
            })?;
            if member.bitfield_size != 0 || self.is_int_bitfield(member.type_id)? {
                return Err(BtfError::Bitfield {
                    struct_name: struct_name.to_owned(),
                    field: path[..=i].join("."),
                });
            }
            bit_offset += member.bit_offset;
            type_id = member.type_id;
        }
        let field = || path.join(".");
        if !bit_offset.is_multiple_of(8) {
            return Err(BtfError::Unaligned {
                struct_name: struct_name.to_owned(),
                field: field(),
                bit_offset,
            });
        }
        let byte_offset = u32::try_from(bit_offset / 8).map_err(|_| BtfError::OffsetTooLarge {
            struct_name: struct_name.to_owned(),
            field: field(),
            bit_offset,
        })?;
        Ok(ResolvedField {
            byte_offset,
            type_id,
        })
    }

    /// Finds member `name` of struct/union `container`, looking through anonymous struct and
    /// union members. Offsets are relative to the start of `container`.
    fn find_member(
        &self,
        container: u32,
        name: &str,
        depth: usize,
    ) -> Result<Option<Member>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep { type_id: container });
        }
        let ty = self.ty(container)?;
        for index in 0..ty.vlen() {
            let at = ty.data + index * MEMBER_LEN;
            let (name_off, type_id, offset) = self.member_at(container, at)?;
            let (bit_offset, bitfield_size) = if ty.kind_flag() {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            let member_name = self.string(name_off)?;
            if member_name == name {
                return Ok(Some(Member {
                    bit_offset: u64::from(bit_offset),
                    bitfield_size,
                    type_id,
                }));
            }
            if member_name.is_empty() {
                let inner = self.skip_modifiers(type_id)?;
                if matches!(self.kind_of(inner)?, KIND_STRUCT | KIND_UNION)
                    && let Some(mut found) = self.find_member(inner, name, depth + 1)?
                {
                    found.bit_offset += u64::from(bit_offset);
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// `(name_off, type, offset)` of the `btf_member` at byte `at`.
    fn member_at(&self, container: u32, at: usize) -> Result<(u32, u32, u32), BtfError> {
        let field = |i: usize| {
            read_u32(&self.data, at + 4 * i).ok_or(BtfError::TypeTruncated {
                type_id: container,
                offset: at,
            })
        };
        Ok((field(0)?, field(1)?, field(2)?))
    }

    /// Whether `type_id` is an int carrying old-style (kind_flag = 0) bitfield information.
    fn is_int_bitfield(&self, type_id: u32) -> Result<bool, BtfError> {
        let id = self.skip_modifiers(type_id)?;
        if id == 0 {
            return Ok(false);
        }
        let ty = self.ty(id)?;
        if ty.kind() != KIND_INT {
            return Ok(false);
        }
        let encoding = read_u32(&self.data, ty.data).ok_or(BtfError::TypeTruncated {
            type_id: id,
            offset: ty.data,
        })?;
        let bits_offset = (encoding >> 16) & 0xff;
        let nr_bits = encoding & 0xff;
        Ok(bits_offset != 0 || u64::from(nr_bits) != u64::from(ty.size_or_type) * 8)
    }

    /// Follows typedefs, const, volatile, restrict and type tags to the underlying type id.
    fn skip_modifiers(&self, mut type_id: u32) -> Result<u32, BtfError> {
        let start = type_id;
        for _ in 0..MAX_DEPTH {
            if type_id == 0 {
                return Ok(0);
            }
            let ty = self.ty(type_id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                    type_id = ty.size_or_type;
                }
                _ => return Ok(type_id),
            }
        }
        Err(BtfError::TooDeep { type_id: start })
    }

    fn ty(&self, type_id: u32) -> Result<&RawType, BtfError> {
        type_id
            .checked_sub(1)
            .and_then(|index| self.types.get(index as usize))
            .ok_or(BtfError::BadTypeId { type_id })
    }

    /// Kind of a type; `void` (id 0) reports kind 0.
    fn kind_of(&self, type_id: u32) -> Result<u32, BtfError> {
        if type_id == 0 {
            return Ok(0);
        }
        Ok(self.ty(type_id)?.kind())
    }

    /// Human-readable name of a type for error messages, e.g. `struct path` or
    /// `anonymous union [1199]`.
    fn describe(&self, type_id: u32) -> String {
        let Ok(ty) = self.ty(type_id) else {
            return format!("type [{type_id}]");
        };
        match self.string(ty.name_off) {
            Ok(name) if !name.is_empty() => format!("{} {name}", kind_name(ty.kind())),
            _ => format!("anonymous {} [{type_id}]", kind_name(ty.kind())),
        }
    }

    fn string(&self, offset: u32) -> Result<&str, BtfError> {
        let bad = || BtfError::BadString { offset };
        let section = &self.data[self.strings.clone()];
        let tail = section.get(offset as usize..).ok_or_else(bad)?;
        let end = tail.iter().position(|&b| b == 0).ok_or_else(bad)?;
        std::str::from_utf8(&tail[..end]).map_err(|_| bad())
    }

    /// Checks that a resolved field has the type a probe reads it as.
    fn expect_field(
        &self,
        struct_name: &str,
        path: &[&str],
        expected: FieldKind,
    ) -> Result<u32, BtfError> {
        let field = self.resolve_field(struct_name, path)?;
        let id = self.skip_modifiers(field.type_id)?;
        let (kind, size) = match id {
            0 => (0, 0),
            _ => {
                let ty = self.ty(id)?;
                (ty.kind(), ty.size_or_type)
            }
        };
        let ok = match expected {
            FieldKind::Pointer => kind == KIND_PTR,
            FieldKind::Int32 => matches!(kind, KIND_INT | KIND_ENUM) && size == 4,
            FieldKind::Int64 => matches!(kind, KIND_INT | KIND_ENUM64) && size == 8,
            FieldKind::Int16 => matches!(kind, KIND_INT | KIND_ENUM) && size == 2,
            FieldKind::Struct16 => matches!(kind, KIND_STRUCT | KIND_UNION) && size == 16,
        };
        if ok {
            return Ok(field.byte_offset);
        }
        let found = match kind {
            0 => "void".to_owned(),
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT | KIND_STRUCT | KIND_UNION => {
                format!("{}-byte {}", size, kind_name(kind))
            }
            _ => kind_name(kind).to_owned(),
        };
        Err(BtfError::UnexpectedFieldType {
            struct_name: struct_name.to_owned(),
            field: path.join("."),
            expected: expected.describe(),
            found,
        })
    }
}

/// Walks the type section, checking every type's kind-specific data fits.
fn parse_types(data: &[u8], range: std::ops::Range<usize>) -> Result<Vec<RawType>, BtfError> {
    let mut types = Vec::new();
    let mut at = range.start;
    while at < range.end {
        // Fits: every type takes at least 12 bytes of a section at most u32::MAX long.
        let type_id = types.len() as u32 + 1;
        let truncated = BtfError::TypeTruncated {
            type_id,
            offset: at,
        };
        if range.end - at < TYPE_HEADER_LEN {
            return Err(truncated);
        }
        // In bounds: checked just above, and `range` lies inside `data`.
        let word = |i: usize| read_u32(data, at + 4 * i).unwrap_or_default();
        let ty = RawType {
            name_off: word(0),
            info: word(1),
            size_or_type: word(2),
            data: at + TYPE_HEADER_LEN,
        };
        let vlen = ty.vlen();
        let extra = match ty.kind() {
            KIND_INT => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            KIND_VAR | KIND_DECL_TAG => 4,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            kind => return Err(BtfError::UnknownKind { type_id, kind }),
        };
        let next = ty.data + extra;
        if next > range.end {
            return Err(truncated);
        }
        types.push(ty);
        at = next;
    }
    Ok(types)
}

#[derive(Clone, Copy)]
enum FieldKind {
    Pointer,
    Int32,
    /// An 8-byte integer (`pt_regs` registers).
    Int64,
    /// A 2-byte integer (network sensor: ports, families, socket types).
    Int16,
    /// A 16-byte struct or union (network sensor: `struct in6_addr`).
    Struct16,
}

impl FieldKind {
    fn describe(self) -> &'static str {
        match self {
            FieldKind::Pointer => "a pointer",
            FieldKind::Int32 => "a 4-byte integer",
            FieldKind::Int64 => "an 8-byte integer",
            FieldKind::Int16 => "a 2-byte integer",
            FieldKind::Struct16 => "a 16-byte struct or union",
        }
    }
}

/// Offsets the Custos probes need, read from the kernel's BTF. Also checks each field has the
/// type the probes read it as, so a kernel that changed one fails loudly instead of feeding the
/// probes garbage.
pub fn kernel_offsets(btf: &KernelBtf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        task_real_parent: btf.expect_field("task_struct", &["real_parent"], FieldKind::Pointer)?,
        task_tgid: btf.expect_field("task_struct", &["tgid"], FieldKind::Int32)?,
        task_exit_code: btf.expect_field("task_struct", &["exit_code"], FieldKind::Int32)?,
        task_pid: btf.expect_field("task_struct", &["pid"], FieldKind::Int32)?,
        // --- file sensor offsets ---
        task_files: btf.expect_field("task_struct", &["files"], FieldKind::Pointer)?,
        task_fs: btf.expect_field("task_struct", &["fs"], FieldKind::Pointer)?,
        files_fdt: btf.expect_field("files_struct", &["fdt"], FieldKind::Pointer)?,
        fdtable_max_fds: btf.expect_field("fdtable", &["max_fds"], FieldKind::Int32)?,
        fdtable_fd: btf.expect_field("fdtable", &["fd"], FieldKind::Pointer)?,
        file_dentry: btf.expect_field("file", &["f_path", "dentry"], FieldKind::Pointer)?,
        file_mnt: btf.expect_field("file", &["f_path", "mnt"], FieldKind::Pointer)?,
        file_inode: btf.expect_field("file", &["f_inode"], FieldKind::Pointer)?,
        fs_root_dentry: btf.expect_field("fs_struct", &["root", "dentry"], FieldKind::Pointer)?,
        fs_root_mnt: btf.expect_field("fs_struct", &["root", "mnt"], FieldKind::Pointer)?,
        fs_pwd_dentry: btf.expect_field("fs_struct", &["pwd", "dentry"], FieldKind::Pointer)?,
        fs_pwd_mnt: btf.expect_field("fs_struct", &["pwd", "mnt"], FieldKind::Pointer)?,
        dentry_parent: btf.expect_field("dentry", &["d_parent"], FieldKind::Pointer)?,
        dentry_name: btf.expect_field("dentry", &["d_name", "name"], FieldKind::Pointer)?,
        vfsmount_root: btf.expect_field("vfsmount", &["mnt_root"], FieldKind::Pointer)?,
        // `mount.mnt` is an embedded `struct vfsmount`; its offset is derived through a pointer
        // field inside it, which also checks that it is embedded (not a pointer).
        mount_mnt: btf
            .expect_field("mount", &["mnt", "mnt_root"], FieldKind::Pointer)?
            .wrapping_sub(btf.expect_field("vfsmount", &["mnt_root"], FieldKind::Pointer)?),
        mount_parent: btf.expect_field("mount", &["mnt_parent"], FieldKind::Pointer)?,
        mount_mountpoint: btf.expect_field("mount", &["mnt_mountpoint"], FieldKind::Pointer)?,
        // --- end of file sensor offsets ---
        // --- network sensor offsets ---
        net_task_files: btf.expect_field("task_struct", &["files"], FieldKind::Pointer)?,
        net_files_fdt: btf.expect_field("files_struct", &["fdt"], FieldKind::Pointer)?,
        net_fdt_max_fds: btf.expect_field("fdtable", &["max_fds"], FieldKind::Int32)?,
        net_fdt_fd: btf.expect_field("fdtable", &["fd"], FieldKind::Pointer)?,
        net_file_private_data: btf.expect_field("file", &["private_data"], FieldKind::Pointer)?,
        net_socket_type: btf.expect_field("socket", &["type"], FieldKind::Int16)?,
        net_socket_sk: btf.expect_field("socket", &["sk"], FieldKind::Pointer)?,
        net_sk_protocol: btf.expect_field("sock", &["sk_protocol"], FieldKind::Int16)?,
        net_skc_family: btf.expect_field(
            "sock",
            &["__sk_common", "skc_family"],
            FieldKind::Int16,
        )?,
        net_skc_num: btf.expect_field("sock", &["__sk_common", "skc_num"], FieldKind::Int16)?,
        net_skc_dport: btf.expect_field("sock", &["__sk_common", "skc_dport"], FieldKind::Int16)?,
        net_skc_daddr: btf.expect_field("sock", &["__sk_common", "skc_daddr"], FieldKind::Int32)?,
        net_skc_rcv_saddr: btf.expect_field(
            "sock",
            &["__sk_common", "skc_rcv_saddr"],
            FieldKind::Int32,
        )?,
        net_skc_v6_daddr: btf.expect_field(
            "sock",
            &["__sk_common", "skc_v6_daddr"],
            FieldKind::Struct16,
        )?,
        net_skc_v6_rcv_saddr: btf.expect_field(
            "sock",
            &["__sk_common", "skc_v6_rcv_saddr"],
            FieldKind::Struct16,
        )?,
        net_unix_addr: btf.expect_field("unix_sock", &["addr"], FieldKind::Pointer)?,
        net_unix_address_len: btf.expect_field("unix_address", &["len"], FieldKind::Int32)?,
        // A flexible array of `struct sockaddr_un`: only its start matters.
        net_unix_address_name: btf.field_offset("unix_address", &["name"])?,
        // --- end of network sensor offsets ---
        // --- enforcement offsets ---
        file_f_mode: btf.expect_field("file", &["f_mode"], FieldKind::Int32)?,
        binprm_filename: btf.expect_field("linux_binprm", &["filename"], FieldKind::Pointer)?,
        // --- end of enforcement offsets ---
        // --- syscall argument offsets ---
        task_stack: btf.expect_field("task_struct", &["stack"], FieldKind::Pointer)?,
        pt_regs_r10: syscall_regs_start(btf)?,
        // --- end of syscall argument offsets ---
    })
}

/// The `pt_regs` registers the probes read in one go, in the order `probes/regs.rs`'s
/// `SyscallRegs` declares them.
const SYSCALL_REGS: [&str; 9] = ["r10", "r9", "r8", "ax", "cx", "dx", "si", "di", "orig_ax"];

/// Offset of `pt_regs.r10`, after checking that [`SYSCALL_REGS`] are consecutive 8-byte
/// integers from there (the x86-64 layout).
fn syscall_regs_start(btf: &KernelBtf) -> Result<u32, BtfError> {
    let start = btf.expect_field("pt_regs", &[SYSCALL_REGS[0]], FieldKind::Int64)?;
    for (index, name) in SYSCALL_REGS.iter().enumerate() {
        let offset = btf.expect_field("pt_regs", &[name], FieldKind::Int64)?;
        let expected = start + 8 * index as u32;
        if offset != expected {
            return Err(BtfError::UnexpectedLayout {
                what: format!(
                    "pt_regs.{name} is at byte {offset}, expected {expected} (x86-64 layout)"
                ),
            });
        }
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs by hand: types and strings, then header + type section + string section
    /// (the string section last, so every truncation cuts into a section).
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            offset
        }

        fn words(&mut self, words: &[u32]) {
            for word in words {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        /// Adds a type header and returns its id.
        fn header(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.name(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            self.words(&[name_off, info, size_or_type]);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, KIND_INT, false, 0, size);
            self.words(&[(1 << 24) | (size * 8)]);
            id
        }

        fn int_bits(&mut self, name: &str, size: u32, nr_bits: u32) -> u32 {
            let id = self.header(name, KIND_INT, false, 0, size);
            self.words(&[nr_bits]);
            id
        }

        fn simple(&mut self, name: &str, kind: u32, target: u32) -> u32 {
            self.header(name, kind, false, 0, target)
        }

        /// `members`: (name, type id, bit offset, bitfield size); a non-zero bitfield size
        /// turns on the kind flag.
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let id = self.header(name, kind, kind_flag, members.len() as u32, size);
            for &(member, type_id, bit_offset, bitfield_size) in members {
                let name_off = self.name(member);
                let offset = if kind_flag {
                    (bitfield_size << 24) | bit_offset
                } else {
                    bit_offset
                };
                self.words(&[name_off, type_id, offset]);
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.push(BTF_VERSION);
            out.push(0);
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            for word in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A small kernel-like BTF:
    ///
    /// ```c
    /// typedef int pid_t;
    /// struct pair { int x; int y; };
    /// typedef struct pair pair_t;
    /// struct task {
    ///     long state;                          // 0
    ///     union {                              // 8
    ///         pid_t tgid;                      // 8
    ///         struct { int a; const struct pair inner; };  // a: 8, inner: 12
    ///     };
    ///     struct task *parent;                 // 24
    ///     pair_t p;                            // 32
    ///     int flag_lo : 3;                     // 40, bitfield (kind_flag encoding)
    ///     int whole;                           // 44
    /// };
    /// ```
    /// plus one of every other kind, so the parser walks their extra data.
    fn sample() -> Builder {
        let mut b = Builder::new();
        let int = b.int("int", 4); // 1
        let long = b.int("long", 8); // 2
        let pid_t = b.simple("pid_t", KIND_TYPEDEF, int); // 3
        // Every other kind, before the structs, so struct ids depend on their sizes being right.
        let enum_id = b.header("colour", KIND_ENUM, false, 2, 4); // 4
        let red = b.name("RED");
        let green = b.name("GREEN");
        b.words(&[red, 0, green, 1]);
        let array = b.header("", KIND_ARRAY, false, 0, 0); // 5
        b.words(&[int, int, 16]);
        let proto = b.header("", KIND_FUNC_PROTO, false, 2, int); // 6
        b.words(&[0, int, 0, long]);
        b.simple("do_thing", KIND_FUNC, proto); // 7
        let var = b.header("counter", KIND_VAR, false, 0, int); // 8
        b.words(&[1]);
        b.header(".data", KIND_DATASEC, false, 1, 8); // 9
        b.words(&[var, 0, 4]);
        b.header("tag", KIND_DECL_TAG, false, 0, var); // 10
        b.words(&[u32::MAX]);
        b.header("big", KIND_ENUM64, false, 1, 8); // 11
        let big = b.name("BIG");
        b.words(&[big, 1, 2]);
        b.simple("double", KIND_FLOAT, 8); // 12
        b.simple("user", KIND_TYPE_TAG, int); // 13
        b.simple("fwd_only", KIND_FWD, 0); // 14
        b.simple("", KIND_VOLATILE, int); // 15
        b.simple("", KIND_RESTRICT, 15); // 16
        let _ = (enum_id, array);

        let pair = b.aggregate(
            KIND_STRUCT,
            "pair",
            8,
            &[("x", int, 0, 0), ("y", int, 32, 0)],
        ); // 17
        let const_pair = b.simple("", KIND_CONST, pair); // 18
        let pair_t = b.simple("pair_t", KIND_TYPEDEF, pair); // 19
        let anon_struct = b.aggregate(
            KIND_STRUCT,
            "",
            12,
            &[("a", int, 0, 0), ("inner", const_pair, 32, 0)],
        ); // 20
        let anon_union = b.aggregate(
            KIND_UNION,
            "",
            12,
            &[("tgid", pid_t, 0, 0), ("", anon_struct, 0, 0)],
        ); // 21
        let task_ptr = b.simple("", KIND_PTR, 23); // 22, points at `task` just below
        let task = b.aggregate(
            KIND_STRUCT,
            "task",
            48,
            &[
                ("state", long, 0, 0),
                ("", anon_union, 64, 0),
                ("parent", task_ptr, 192, 0),
                ("p", pair_t, 256, 0),
                ("flag_lo", int, 320, 3),
                ("whole", int, 352, 0),
            ],
        );
        assert_eq!(task, 23);
        b
    }

    fn sample_btf() -> KernelBtf {
        KernelBtf::parse(sample().build()).expect("sample BTF parses")
    }

    /// A `pt_regs` with the registers the probes read, `r10` at byte 56 and, when `swap`, `si`
    /// and `di` in the wrong order.
    fn pt_regs_btf(swap: bool) -> KernelBtf {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let mut names: Vec<&str> = vec!["r15", "r14", "r13", "r12", "bp", "bx", "r11"];
        names.extend(SYSCALL_REGS);
        if swap {
            let (si, di) = (names.len() - 3, names.len() - 2);
            names.swap(si, di);
        }
        let members: Vec<(&str, u32, u32, u32)> = names
            .iter()
            .enumerate()
            .map(|(index, name)| (*name, ulong, 64 * index as u32, 0))
            .collect();
        b.aggregate(KIND_STRUCT, "pt_regs", 8 * names.len() as u32, &members);
        KernelBtf::parse(b.build()).expect("pt_regs BTF parses")
    }

    #[test]
    fn syscall_registers_must_have_the_x86_64_layout() {
        assert_eq!(syscall_regs_start(&pt_regs_btf(false)).unwrap(), 56);
        let error = syscall_regs_start(&pt_regs_btf(true)).unwrap_err();
        assert!(
            matches!(&error, BtfError::UnexpectedLayout { what } if what.contains("pt_regs.si is at byte 112")),
            "{error:?}"
        );
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = sample_btf();
        assert_eq!(btf.field_offset("task", &["state"]).unwrap(), 0);
        assert_eq!(btf.field_offset("task", &["tgid"]).unwrap(), 8);
        assert_eq!(btf.field_offset("task", &["a"]).unwrap(), 8);
        assert_eq!(btf.field_offset("task", &["inner"]).unwrap(), 12);
        assert_eq!(btf.field_offset("task", &["parent"]).unwrap(), 24);
        assert_eq!(btf.field_offset("task", &["whole"]).unwrap(), 44);
        assert_eq!(btf.field_offset("pair", &["y"]).unwrap(), 4);
    }

    #[test]
    fn follows_embedded_structs_through_const_and_typedef() {
        let btf = sample_btf();
        // `inner` is a `const struct pair` inside an anonymous struct inside an anonymous union.
        assert_eq!(btf.field_offset("task", &["inner", "x"]).unwrap(), 12);
        assert_eq!(btf.field_offset("task", &["inner", "y"]).unwrap(), 16);
        // `p` is a `pair_t` typedef.
        assert_eq!(btf.field_offset("task", &["p", "y"]).unwrap(), 36);
    }

    #[test]
    fn does_not_follow_pointers() {
        let btf = sample_btf();
        let error = btf.field_offset("task", &["parent", "state"]).unwrap_err();
        assert!(
            matches!(&error, BtfError::NotAStruct { field, kind: "pointer", .. } if field == "parent"),
            "{error:?}"
        );
        let error = btf.field_offset("task", &["tgid", "x"]).unwrap_err();
        assert!(
            matches!(&error, BtfError::NotAStruct { kind: "int", .. }),
            "{error:?}"
        );
    }

    #[test]
    fn missing_field_and_struct_are_named() {
        let btf = sample_btf();
        let error = btf.field_offset("task", &["nope"]).unwrap_err();
        assert!(
            matches!(&error, BtfError::FieldNotFound { struct_name, field, missing, container }
                if struct_name == "task" && field == "nope" && missing == "nope" && container == "struct task"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("task") && message.contains("nope"),
            "{message}"
        );

        let error = btf.field_offset("task", &["p", "z"]).unwrap_err();
        assert!(
            matches!(&error, BtfError::FieldNotFound { field, missing, container, .. }
                if field == "p.z" && missing == "z" && container == "struct pair"),
            "{error:?}"
        );

        let error = btf.field_offset("no_such_struct", &["x"]).unwrap_err();
        assert!(
            matches!(&error, BtfError::StructNotFound { struct_name } if struct_name == "no_such_struct"),
            "{error:?}"
        );
        assert!(error.to_string().contains("no_such_struct"));
        // Forward declarations and typedefs are not structs.
        assert!(matches!(
            btf.field_offset("fwd_only", &["x"]),
            Err(BtfError::StructNotFound { .. })
        ));
        assert!(matches!(
            btf.field_offset("pair_t", &["x"]),
            Err(BtfError::StructNotFound { .. })
        ));
    }

    #[test]
    fn rejects_bad_paths() {
        let btf = sample_btf();
        assert!(matches!(
            btf.field_offset("task", &[]),
            Err(BtfError::InvalidPath { .. })
        ));
        // An empty segment must not match an anonymous member.
        assert!(matches!(
            btf.field_offset("task", &[""]),
            Err(BtfError::InvalidPath { .. })
        ));
        assert!(matches!(
            btf.field_offset("task", &["p", ""]),
            Err(BtfError::InvalidPath { .. })
        ));
    }

    #[test]
    fn refuses_bitfields() {
        let btf = sample_btf();
        let error = btf.field_offset("task", &["flag_lo"]).unwrap_err();
        assert!(
            matches!(&error, BtfError::Bitfield { field, .. } if field == "flag_lo"),
            "{error:?}"
        );

        // Old-style encoding: the member's int type carries the bit count.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let nibble = b.int_bits("int", 4, 4);
        b.aggregate(
            KIND_STRUCT,
            "s",
            8,
            &[("a", int, 0, 0), ("n", nibble, 32, 0), ("m", int, 36, 0)],
        );
        let btf = KernelBtf::parse(b.build()).unwrap();
        assert_eq!(btf.field_offset("s", &["a"]).unwrap(), 0);
        assert!(matches!(
            btf.field_offset("s", &["n"]),
            Err(BtfError::Bitfield { .. })
        ));
        let error = btf.field_offset("s", &["m"]).unwrap_err();
        assert!(
            matches!(error, BtfError::Unaligned { bit_offset: 36, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn duplicate_struct_names() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.aggregate(
            KIND_STRUCT,
            "dup",
            8,
            &[("a", int, 0, 0), ("b", int, 32, 0)],
        );
        b.aggregate(
            KIND_STRUCT,
            "dup",
            8,
            &[("a", int, 0, 0), ("b", int, 0, 0), ("c", int, 32, 0)],
        );
        let btf = KernelBtf::parse(b.build()).unwrap();
        // Agreeing definitions, or a field only one of them has, are fine.
        assert_eq!(btf.field_offset("dup", &["a"]).unwrap(), 0);
        assert_eq!(btf.field_offset("dup", &["c"]).unwrap(), 4);
        assert!(matches!(
            btf.field_offset("dup", &["b"]),
            Err(BtfError::Ambiguous {
                first: 4,
                second: 0,
                ..
            })
        ));
        assert!(matches!(
            btf.field_offset("dup", &["d"]),
            Err(BtfError::FieldNotFound { .. })
        ));
    }

    #[test]
    fn kernel_offsets_checks_field_types() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let pid_t = b.simple("pid_t", KIND_TYPEDEF, int);
        let ptr = b.simple("", KIND_PTR, 4);
        b.aggregate(
            KIND_STRUCT,
            "task_struct",
            24,
            &[
                ("tgid", pid_t, 0, 0),
                ("exit_code", int, 32, 0),
                ("real_parent", ptr, 64, 0),
            ],
        );
        // The checks kernel_offsets applies, on a synthetic task_struct (the real kernel's
        // full set of offsets is checked against bpftool in `matches_bpftool_on_running_kernel`).
        let btf = KernelBtf::parse(b.build()).unwrap();
        let task = |field: &str, kind| btf.expect_field("task_struct", &[field], kind).unwrap();
        assert_eq!(
            (
                task("tgid", FieldKind::Int32),
                task("exit_code", FieldKind::Int32),
                task("real_parent", FieldKind::Pointer),
            ),
            (0, 4, 8)
        );

        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.aggregate(
            KIND_STRUCT,
            "task_struct",
            24,
            &[
                ("tgid", int, 0, 0),
                ("exit_code", int, 32, 0),
                ("real_parent", int, 64, 0),
            ],
        );
        let error = KernelBtf::parse(b.build())
            .unwrap()
            .expect_field("task_struct", &["real_parent"], FieldKind::Pointer)
            .unwrap_err();
        assert!(
            matches!(&error, BtfError::UnexpectedFieldType { field, expected: "a pointer", .. } if field == "real_parent"),
            "{error:?}"
        );
    }

    #[test]
    fn rejects_bad_headers() {
        let good = sample().build();

        let mut bad = good.clone();
        bad[0] = 0x7f;
        bad[1] = 0x45;
        assert!(matches!(
            KernelBtf::parse(bad),
            Err(BtfError::BadMagic { found: 0x457f })
        ));

        let mut big_endian = good.clone();
        big_endian.swap(0, 1);
        assert!(matches!(
            KernelBtf::parse(big_endian),
            Err(BtfError::BigEndian)
        ));

        let mut version = good.clone();
        version[2] = 2;
        assert!(matches!(
            KernelBtf::parse(version),
            Err(BtfError::UnsupportedVersion { version: 2 })
        ));

        let mut hdr_len = good.clone();
        hdr_len[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            KernelBtf::parse(hdr_len),
            Err(BtfError::BadHeaderLength { hdr_len: 8 })
        ));

        let mut huge = good.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            KernelBtf::parse(huge),
            Err(BtfError::SectionOutOfBounds {
                section: "string",
                ..
            })
        ));

        let mut unknown_kind = Builder::new();
        unknown_kind.int("int", 4);
        unknown_kind.header("x", 31, false, 0, 0);
        assert!(matches!(
            KernelBtf::parse(unknown_kind.build()),
            Err(BtfError::UnknownKind {
                type_id: 2,
                kind: 31
            })
        ));

        assert!(matches!(
            KernelBtf::parse(Vec::new()),
            Err(BtfError::Truncated { .. })
        ));
    }

    #[test]
    fn every_truncation_errors_without_panicking() {
        let good = sample().build();
        KernelBtf::parse(good.clone()).unwrap();
        for len in 0..good.len() {
            let result = KernelBtf::parse(good[..len].to_vec());
            assert!(
                result.is_err(),
                "parsing the first {len} of {} bytes succeeded",
                good.len()
            );
        }
    }

    #[test]
    fn corrupt_references_error_without_panicking() {
        // A struct whose member names a type that does not exist, and a struct with a name
        // offset past the string section.
        let mut b = Builder::new();
        b.aggregate(KIND_STRUCT, "s", 4, &[("a", 99, 0, 0), ("", 98, 0, 0)]);
        let btf = KernelBtf::parse(b.build()).unwrap();
        assert!(matches!(
            btf.field_offset("s", &["a"]),
            Err(BtfError::BadTypeId { type_id: 99 })
        ));
        assert!(matches!(
            btf.field_offset("s", &["b"]),
            Err(BtfError::BadTypeId { type_id: 98 })
        ));
        assert!(matches!(
            btf.field_offset("s", &["a", "b"]),
            Err(BtfError::BadTypeId { type_id: 99 })
        ));

        let mut b = Builder::new();
        b.words(&[10_000, KIND_STRUCT << 24, 0]);
        assert!(matches!(
            KernelBtf::parse(b.build()),
            Err(BtfError::BadString { offset: 10_000 })
        ));

        // A typedef loop and an anonymous struct that contains itself.
        let mut b = Builder::new();
        let looped = b.simple("loop", KIND_TYPEDEF, 1);
        b.aggregate(KIND_STRUCT, "s", 4, &[("l", looped, 0, 0), ("", 3, 0, 0)]);
        b.aggregate(KIND_STRUCT, "", 4, &[("", 3, 0, 0)]);
        let btf = KernelBtf::parse(b.build()).unwrap();
        assert!(matches!(
            btf.field_offset("s", &["l", "x"]),
            Err(BtfError::TooDeep { .. })
        ));
        assert!(matches!(
            btf.field_offset("s", &["x"]),
            Err(BtfError::TooDeep { .. })
        ));
    }

    // ---- Against the running kernel, cross-checked with bpftool. ----

    /// One type from `bpftool btf dump ... format raw`.
    #[derive(Debug, Default)]
    struct DumpedType {
        kind: String,
        name: String,
        /// `type_id=` of modifiers and typedefs.
        target: Option<u32>,
        /// (name, type id, bits offset, bitfield size) of struct/union members.
        members: Vec<(String, u32, u64, u32)>,
    }

    fn attr(line: &str, key: &str) -> Option<u64> {
        let start = line.find(&format!(" {key}="))? + key.len() + 2;
        let value: String = line[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        value.parse().ok()
    }

    fn quoted(line: &str) -> String {
        let start = line.find('\'').map(|i| i + 1).unwrap_or(0);
        let end = line[start..].find('\'').map(|i| start + i).unwrap_or(start);
        line[start..end].to_owned()
    }

    fn parse_bpftool_dump(text: &str) -> HashMap<u32, DumpedType> {
        let mut types = HashMap::new();
        let mut current: Option<u32> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ").expect("type line");
                let id: u32 = id.parse().expect("type id");
                let kind = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let mut name = quoted(rest);
                if name == "(anon)" {
                    name.clear();
                }
                let target = attr(line, "type_id").map(|t| t as u32);
                types.insert(
                    id,
                    DumpedType {
                        kind,
                        name,
                        target,
                        members: Vec::new(),
                    },
                );
                current = Some(id);
            } else if line.starts_with('\t') {
                let Some(id) = current else { continue };
                let ty = types.get_mut(&id).unwrap();
                if ty.kind != "STRUCT" && ty.kind != "UNION" {
                    continue;
                }
                let mut name = quoted(line);
                if name == "(anon)" {
                    name.clear();
                }
                ty.members.push((
                    name,
                    attr(line, "type_id").expect("member type_id") as u32,
                    attr(line, "bits_offset").expect("member bits_offset"),
                    attr(line, "bitfield_size").unwrap_or(0) as u32,
                ));
            }
        }
        types
    }

    /// An independent resolver over bpftool's text: bit offset of `path` inside type `id`.
    fn dump_resolve(types: &HashMap<u32, DumpedType>, id: u32, path: &[&str]) -> Option<u64> {
        fn strip(types: &HashMap<u32, DumpedType>, mut id: u32) -> u32 {
            while let Some(ty) = types.get(&id) {
                match ty.kind.as_str() {
                    "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                        id = ty.target.unwrap()
                    }
                    _ => break,
                }
            }
            id
        }
        fn member(types: &HashMap<u32, DumpedType>, id: u32, name: &str) -> Option<(u64, u32)> {
            for (member_name, type_id, bits, _) in &types.get(&id)?.members {
                if member_name == name {
                    return Some((*bits, *type_id));
                }
                if member_name.is_empty()
                    && let Some((inner, t)) = member(types, strip(types, *type_id), name)
                {
                    return Some((bits + inner, t));
                }
            }
            None
        }
        let (first, rest) = path.split_first()?;
        let (bits, type_id) = member(types, id, first)?;
        if rest.is_empty() {
            return Some(bits);
        }
        Some(bits + dump_resolve(types, strip(types, type_id), rest)?)
    }

    /// All named members of struct/union `id`, with anonymous members' members inlined:
    /// (name, bits offset from the start of `id`, bitfield size).
    fn flatten_members(
        types: &HashMap<u32, DumpedType>,
        id: u32,
        base: u64,
        depth: usize,
        out: &mut Vec<(String, u64, u32)>,
    ) {
        assert!(depth < 32, "anonymous members nested too deep");
        for (name, type_id, bits, bitfield_size) in &types[&id].members {
            if !name.is_empty() {
                out.push((name.clone(), base + bits, *bitfield_size));
                continue;
            }
            let mut inner = *type_id;
            while let Some(ty) = types.get(&inner) {
                match ty.kind.as_str() {
                    "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                        inner = ty.target.unwrap()
                    }
                    "STRUCT" | "UNION" => {
                        flatten_members(types, inner, base + bits, depth + 1, out);
                        break;
                    }
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn matches_bpftool_on_running_kernel() {
        let path = Path::new(VMLINUX_BTF_PATH);
        if !path.exists() {
            eprintln!("skipping: {VMLINUX_BTF_PATH} does not exist (kernel without BTF?)");
            return;
        }
        let output = match std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF_PATH, "format", "raw"])
            .output()
            .or_else(|_| {
                std::process::Command::new("/usr/sbin/bpftool")
                    .args(["btf", "dump", "file", VMLINUX_BTF_PATH, "format", "raw"])
                    .output()
            }) {
            Ok(output) if output.status.success() => output,
            Ok(output) => {
                eprintln!(
                    "skipping: bpftool failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                return;
            }
            Err(error) => {
                eprintln!("skipping: cannot run bpftool: {error}");
                return;
            }
        };

        let started = std::time::Instant::now();
        let btf = KernelBtf::from_sys_fs().expect("parse running kernel's BTF");
        eprintln!("parsed {btf:?} in {:?}", started.elapsed());

        let text = String::from_utf8(output.stdout).expect("bpftool output is UTF-8");
        let dumped = parse_bpftool_dump(&text);
        let mut struct_ids: HashMap<&str, Vec<u32>> = HashMap::new();
        for (id, ty) in &dumped {
            if (ty.kind == "STRUCT" || ty.kind == "UNION") && !ty.name.is_empty() {
                struct_ids.entry(ty.name.as_str()).or_default().push(*id);
            }
        }
        assert_eq!(
            btf.types.len(),
            dumped.len(),
            "type counts differ from bpftool"
        );

        let checks: &[(&str, &[&str])] = &[
            ("task_struct", &["tgid"]),
            ("task_struct", &["real_parent"]),
            ("task_struct", &["exit_code"]),
            ("task_struct", &["thread_pid"]),
            ("mm_struct", &["arg_start"]),
            ("mm_struct", &["arg_end"]),
            ("file", &["f_path"]),
            ("file", &["f_path", "dentry"]),
            ("path", &["dentry"]),
            ("linux_binprm", &["file"]),
            ("linux_binprm", &["filename"]),
            ("file", &["f_mode"]),
        ];
        for (struct_name, path) in checks {
            let ids = &struct_ids[struct_name];
            assert_eq!(
                ids.len(),
                1,
                "{struct_name} is not unique in bpftool's dump"
            );
            let bits = dump_resolve(&dumped, ids[0], path)
                .unwrap_or_else(|| panic!("bpftool dump has no {struct_name}.{}", path.join(".")));
            assert_eq!(bits % 8, 0);
            let ours = btf.field_offset(struct_name, path).unwrap();
            eprintln!("{struct_name}.{} = {ours}", path.join("."));
            assert_eq!(
                u64::from(ours),
                bits / 8,
                "{struct_name}.{}",
                path.join(".")
            );
        }

        let offsets = kernel_offsets(&btf).expect("kernel offsets");
        assert_eq!(
            offsets.task_tgid,
            btf.field_offset("task_struct", &["tgid"]).unwrap()
        );
        assert_eq!(
            offsets.task_real_parent,
            btf.field_offset("task_struct", &["real_parent"]).unwrap()
        );
        assert_eq!(
            offsets.task_exit_code,
            btf.field_offset("task_struct", &["exit_code"]).unwrap()
        );
        eprintln!("{offsets:?}");

        // Sweep: every whole, byte-aligned, named member of every uniquely named struct or
        // union, including those reached through anonymous members, as bpftool places them.
        let mut compared = 0usize;
        let mut bitfields = 0usize;
        for (name, ids) in &struct_ids {
            if ids.len() != 1 {
                continue;
            }
            let mut members = Vec::new();
            flatten_members(&dumped, ids[0], 0, 0, &mut members);
            for (member, bits, bitfield_size) in members {
                let result = btf.field_offset(name, &[member.as_str()]);
                if bitfield_size != 0 {
                    assert!(
                        matches!(result, Err(BtfError::Bitfield { .. })),
                        "{name}.{member}: {result:?}"
                    );
                    bitfields += 1;
                    continue;
                }
                match result {
                    Ok(ours) => assert_eq!(u64::from(ours), bits / 8, "{name}.{member}"),
                    Err(BtfError::Unaligned { bit_offset, .. }) => {
                        assert_eq!(bit_offset, bits, "{name}.{member}")
                    }
                    Err(error) => panic!("{name}.{member}: {error}"),
                }
                compared += 1;
            }
        }
        eprintln!("compared {compared} members and {bitfields} bitfields with bpftool");
        assert!(compared > 10_000);
    }
}
