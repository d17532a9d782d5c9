//! The standalone gateway's global allocator: mimalloc, called without its alignment path
//! when the layout does not need it.
//!
//! The `mimalloc` crate's `GlobalAlloc` sends every request through `mi_malloc_aligned`,
//! which costs ~70 instructions a call against ~25 for `mi_malloc`; the gateway makes ~57
//! allocations a request (callgrind, `bench/gateway/callgrind.sh`), almost all with an
//! alignment of 8 or less. Every mimalloc block is aligned to at least a word (8 bytes), so
//! those go to `mi_malloc`; larger alignments (tokio's task cells, 128) keep the aligned call.
//! Blocks from either are freed by `mi_free`.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment every mimalloc block has (its smallest block is one machine word).
const MI_MIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module comment).
pub struct Mimalloc;

// SAFETY: mimalloc returns blocks of at least the requested size, aligned to at least
// MI_MIN_ALIGN by `mi_malloc`/`mi_zalloc`/`mi_realloc` and to the requested alignment by the
// `_aligned` calls; a block from any of them may be freed or reallocated by `mi_free` /
// `mi_realloc*`, whatever call made it. Null on failure, as `GlobalAlloc` expects.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            allocate(
                layout,
                |n| mi::mi_malloc(n),
                |n, a| mi::mi_malloc_aligned(n, a),
            )
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            allocate(
                layout,
                |n| mi::mi_zalloc(n),
                |n, a| mi::mi_zalloc_aligned(n, a),
            )
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract);
        // the new block keeps the layout's alignment.
        unsafe {
            if layout.align() <= MI_MIN_ALIGN {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

/// A block for `layout` from `plain` (word alignment) or, for a larger alignment, `aligned`
/// (closures, so each call site is a direct call).
#[inline(always)]
fn allocate(
    layout: Layout,
    plain: impl FnOnce(usize) -> *mut c_void,
    aligned: impl FnOnce(usize, usize) -> *mut c_void,
) -> *mut u8 {
    if layout.align() <= MI_MIN_ALIGN {
        plain(layout.size()) as *mut u8
    } else {
        aligned(layout.size(), layout.align()) as *mut u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_layout_s_alignment_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1usize, 7, 8, 9, 16, 24, 40, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let grown = size * 3 + 5;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    for i in 0..size {
                        assert_eq!(*q.add(i), i as u8);
                    }
                    a.dealloc(q, Layout::from_size_align(grown, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
