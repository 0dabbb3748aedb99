//! The kernel's own type information (`/sys/kernel/btf/vmlinux`), read just far
//! enough to find where a struct keeps a field: the raw-tracepoint watcher gets
//! `struct sock *` and `struct task_struct *`, and reads the few fields it needs
//! at the offsets found here, on whatever kernel it runs (no offset is fixed at
//! build time). The format is include/uapi/linux/btf.h; aya parses BTF too, but
//! keeps struct members private.
use std::{collections::HashMap, path::Path};

/// Where the kernel exposes its BTF (CONFIG_DEBUG_INFO_BTF, kernel 5.4+).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why a field's place could not be read from BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("field {strukt}.{field} is a bit field")]
    BitField { strukt: String, field: String },
    #[error("field {strukt}.{field} is {found} bytes, expected {expected}")]
    Size { strukt: String, field: String, found: u32, expected: u32 },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// Follow at most this many typedefs and qualifiers, or nested anonymous members.
const MAX_DEPTH: usize = 32;

/// One member of a struct or union.
#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset; with the kind flag, the low 24 bits, the high 8 the bit-field size.
    offset: u32,
}

/// One type: its kind, name, size-or-type word, and members for struct/union.
#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    kind_flag: bool,
    size_or_type: u32,
    members: Vec<Member>,
    /// Element type of an array, and its length.
    array: Option<(u32, u32)>,
}

/// The parsed type table, with an index of named structs.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

/// A field's place: byte offset from the start of the outer struct, and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data.get(at..at + 4).ok_or(BtfError::Malformed("truncated"))?;
    Ok(u32::from_le_bytes(bytes.try_into().map_err(|_| BtfError::Malformed("truncated"))?))
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path)
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (header, types, strings).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(..2).ok_or(BtfError::Malformed("truncated"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed("offset overflow"))?;
            let end = start.checked_add(len).ok_or(BtfError::Malformed("offset overflow"))?;
            data.get(start..end).ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        // Type id 0 is void; ids count from 1 in the order of the section.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            kind_flag: false,
            size_or_type: 0,
            members: Vec::new(),
            array: None,
        }];
        let mut at = 0;
        while at < type_data.len() {
            let (ty, len) = parse_type(type_data, at)?;
            types.push(ty);
            at += len;
        }
        let mut btf = Self { types, strings, structs: HashMap::new() };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name != 0 {
                let name = btf.string(ty.name)?.to_owned();
                // The first of several same-named structs (modules' BTF is separate).
                btf.structs.entry(name).or_insert(u32::try_from(id).unwrap_or(u32::MAX));
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> Result<&str, BtfError> {
        let rest = self.strings.get(offset as usize..).ok_or(BtfError::Malformed("string out of bounds"))?;
        let end = rest.iter().position(|b| *b == 0).ok_or(BtfError::Malformed("unterminated string"))?;
        std::str::from_utf8(&rest[..end]).map_err(|_| BtfError::Malformed("string is not UTF-8"))
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::Malformed("type id out of range"))
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<&Type, BtfError> {
        for _ in 0..MAX_DEPTH {
            let ty = self.ty(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(ty),
            }
        }
        Err(BtfError::Malformed("type chain too deep"))
    }

    /// The size in bytes of type `id`.
    fn size(&self, id: u32, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed("array nested too deep"));
        }
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION => Ok(ty.size_or_type),
            KIND_ARRAY => {
                let (elem, len) = ty.array.ok_or(BtfError::Malformed("array without data"))?;
                Ok(self.size(elem, depth + 1)?.saturating_mul(len))
            }
            // Pointers.
            2 => Ok(8),
            _ => Err(BtfError::Malformed("field of a type without size")),
        }
    }

    /// The place of `field` in struct `strukt`, found also inside anonymous
    /// struct and union members (`sock.__sk_common.skc_num` is `skc_num` in an
    /// anonymous struct in a union). `path` may name intermediate members with
    /// dots: `__sk_common.skc_num`. The field must be `expected` bytes and not
    /// a bit field.
    pub fn field(&self, strukt: &str, path: &str, expected: u32) -> Result<Field, BtfError> {
        let mut id = *self.structs.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut offset_bits = 0_u32;
        let no_field = || BtfError::NoField { strukt: strukt.to_owned(), field: path.to_owned() };
        let mut last = None;
        for part in path.split('.') {
            let (bits, member) = self.find_member(id, part, 0)?.ok_or_else(no_field)?;
            offset_bits = offset_bits.checked_add(bits).ok_or(BtfError::Malformed("offset overflow"))?;
            id = member.ty;
            last = Some(member);
        }
        let member = last.ok_or_else(no_field)?;
        let bitfield = self.bitfield_size(member) != 0;
        if bitfield || !offset_bits.is_multiple_of(8) {
            return Err(BtfError::BitField { strukt: strukt.to_owned(), field: path.to_owned() });
        }
        let size = self.size(member.ty, 0)?;
        if size != expected {
            return Err(BtfError::Size {
                strukt: strukt.to_owned(),
                field: path.to_owned(),
                found: size,
                expected,
            });
        }
        Ok(Field { offset: offset_bits / 8, size })
    }

    /// The bit-field size of a member, 0 for an ordinary member. Whether the
    /// struct uses the kind flag was recorded in the member's offset word.
    fn bitfield_size(&self, member: Member) -> u32 {
        member.offset >> 24
    }

    /// Searches the members of struct/union `id` for `name`, descending into
    /// anonymous members. Returns the member's bit offset from `id`'s start.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<(u32, Member)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed("anonymous members nested too deep"));
        }
        let ty = self.resolve(id)?;
        if ty.kind != KIND_STRUCT && ty.kind != KIND_UNION {
            return Ok(None);
        }
        for m in &ty.members {
            let bits = if ty.kind_flag { m.offset & 0x00ff_ffff } else { m.offset };
            // Keep the bit-field size (kind flag only) in the top byte for the caller.
            let member = Member { offset: if ty.kind_flag { m.offset & 0xff00_0000 } else { 0 }, ..*m };
            if m.name == 0 {
                if let Some((inner, found)) = self.find_member(m.ty, name, depth + 1)? {
                    let bits = bits.checked_add(inner).ok_or(BtfError::Malformed("offset overflow"))?;
                    return Ok(Some((bits, found)));
                }
            } else if self.string(m.name)? == name {
                return Ok(Some((bits, member)));
            }
        }
        Ok(None)
    }
}

/// Parses the type at `at`; returns it and its length in bytes.
fn parse_type(data: &[u8], at: usize) -> Result<(Type, usize), BtfError> {
    let name = u32_at(data, at)?;
    let info = u32_at(data, at + 4)?;
    let size_or_type = u32_at(data, at + 8)?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let body = at + 12;
    let mut ty = Type { kind, name, kind_flag, size_or_type, members: Vec::new(), array: None };
    let extra = match kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7..=12 | 16 | 18 => 0,
        KIND_ARRAY => {
            ty.array = Some((u32_at(data, body)?, u32_at(data, body + 8)?));
            12
        }
        KIND_STRUCT | KIND_UNION => {
            for i in 0..vlen {
                let m = body + i * 12;
                ty.members.push(Member {
                    name: u32_at(data, m)?,
                    ty: u32_at(data, m + 4)?,
                    offset: u32_at(data, m + 8)?,
                });
            }
            vlen * 12
        }
        // ENUM, FUNC_PROTO: 8 bytes per entry.
        KIND_ENUM | 13 => vlen * 8,
        // DATASEC, ENUM64: 12 bytes per entry.
        15 | KIND_ENUM64 => vlen * 12,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    };
    if data.len() < body + extra {
        return Err(BtfError::Malformed("truncated type"));
    }
    Ok((ty, 12 + extra))
}

#[cfg(test)]
#[path = "btf_tests.rs"]
mod tests;
