//! Reading and writing guest memory from a host function: every guest pointer and
//! length is bounds-checked, and a bad one traps the call.

use wasmtime::Caller;

use super::state::HostState;

/// The caller of a host function.
pub(super) type C<'a> = Caller<'a, HostState>;

pub(super) fn oob() -> wasmtime::Error {
    wasmtime::format_err!("guest pointer or length out of bounds")
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(super) fn read(c: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if l == 0 {
        return Ok(Vec::new());
    }
    let m = c.data().memory.ok_or_else(oob)?;
    let data = m.data(&*c);
    let end = p.checked_add(l).filter(|&e| e <= data.len()).ok_or_else(oob)?;
    Ok(data[p..end].to_vec())
}

/// Runs `f` on two guest byte ranges and the host state at once, without copying the
/// bytes out (header names and values on the hot path).
pub(super) fn with_slices<T>(
    c: &mut C<'_>,
    a: (i32, i32),
    b: (i32, i32),
    f: impl FnOnce(&[u8], &[u8], &mut HostState) -> T,
) -> wasmtime::Result<T> {
    let m = c.data().memory.ok_or_else(oob)?;
    let (mem, st) = m.data_and_store_mut(&mut *c);
    let range = |(p, l): (i32, i32)| -> wasmtime::Result<std::ops::Range<usize>> {
        let (p, l) = (p as u32 as usize, l as u32 as usize);
        let end = p.checked_add(l).filter(|&e| e <= mem.len()).ok_or_else(oob)?;
        Ok(p..end)
    };
    let (ra, rb) = (range(a)?, range(b)?);
    Ok(f(&mem[ra], &mem[rb], st))
}

pub(super) fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<String> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

pub(super) fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let m = c.data().memory.ok_or_else(oob)?;
    m.write(&mut *c, ptr as u32 as usize, bytes).map_err(|_| oob())
}

pub(super) fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> wasmtime::Result<()> {
    write(c, ptr, &v.to_le_bytes())
}

pub(super) fn write_u64(c: &mut C<'_>, ptr: i32, v: u64) -> wasmtime::Result<()> {
    write(c, ptr, &v.to_le_bytes())
}
