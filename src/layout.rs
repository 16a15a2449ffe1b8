//! Binary layouts and buffer sizes shared by the CPU reference, the launch
//! plans, the GPU wrappers and the adapters: the keep bits ([`KeepLayout`]),
//! the forward scratch ([`ForwardScratch`]) and the element count of every
//! buffer of one layer's step ([`Sizes`]). Each layout is defined here once;
//! the kernels' side is named at each definition. This module depends on the
//! launch geometry (the scratch has one entry per block of the gate and per
//! row and class tile of the logits) and on nothing of [`crate::cpu`] or
//! [`crate::gpu`], so both may use it.

use crate::config::{InputDims, Pool};
use crate::launch::{gate_blocks, logits_groups, logits_split_room, logits_tiles, ROW_PART_BYTES};
use crate::params::{pool_code, AiecShape};

/// How the keep bits of one activation tensor are laid out: one bit per
/// element, row by row, every row starting at a `u32` word (so that the
/// activation passes build and read whole words for any row length, at most 31
/// padding bits per row, all 0). A row is what the passes walk along: the
/// `B*P` rows of `C` channels in the tokens layouts (`token`, `avg_token`,
/// `none`), the `B*C` rows of `P = H*W` positions in `avg_hw`. Element `j` of
/// row `r` (flat index `r * row_len + j`) is bit `j % 32` of word
/// `r * words_per_row + j / 32`, least significant bit first. This is the
/// Rust definition ([`keep_words`] and [`crate::cpu::buffers::pack_keep`] /
/// `unpack_keep` use it); the C++ one is `aiec_k::keep_*` in
/// `kernels/aiec_params.cuh` (the kernels and the self-test use it), the
/// Python word count `aiec._ops.keep_words` (for symbolic shapes). Tests pin
/// them equal: `tests/aiec.rs` (`the_kernels_keep_bits_are_the_layouts`) and
/// `python/tests/test_pt_ops.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepLayout {
    /// Rows.
    pub rows: u64,
    /// Elements per row (`C`, or `P` for `avg_hw`), at least 1 unless the tensor is empty.
    pub row_len: u64,
    /// `ceil(row_len / 32)`.
    pub words_per_row: u64,
}

impl KeepLayout {
    /// The layout for a planned shape.
    pub fn of(shape: &AiecShape) -> KeepLayout {
        let (rows, row_len) = if shape.pool == pool_code(Pool::AvgHw) {
            (shape.batch * shape.channels, shape.positions)
        } else {
            (shape.batch * shape.positions, shape.channels)
        };
        KeepLayout { rows, row_len, words_per_row: row_len.div_ceil(32) }
    }

    /// The layout for a planned input.
    pub fn of_dims(dims: &InputDims) -> KeepLayout {
        Self::of(&AiecShape::new(dims, 1, 0.0, false))
    }

    /// Words in all.
    pub fn words(&self) -> usize {
        (self.rows * self.words_per_row) as usize
    }

    /// The word and bit of the element at flat index `i` (`i < rows * row_len`).
    pub fn bit(&self, i: u64) -> (usize, u32) {
        let (r, j) = (i / self.row_len, i % self.row_len);
        ((r * self.words_per_row + j / 32) as usize, (j % 32) as u32)
    }
}

/// The keep bits of one activation tensor: `u32` words ([`KeepLayout`]).
pub fn keep_words(shape: &AiecShape) -> usize {
    KeepLayout::of(shape).words()
}

/// Where the parts of a training forward's scratch memory lie (bytes from its
/// start): the gate's per-block partial sums and counts, the gate's ticket
/// (zero before the first launch; every launch leaves it zero), the targets
/// status, the logits' per-row, per-class-tile softmax statistics and the
/// tickets of the logits' split sums (zero before the first launch; every
/// launch leaves them zero) and the partial logits of the slices past the
/// second where those sums split deeper. One allocation, zeroed once for each
/// layout: another shape's layout may keep its tickets where this one leaves
/// partial sums (`gpu::fused::AuxMut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardScratch {
    /// `f32 [gate_blocks]`.
    pub gate_sum_sq: usize,
    /// `u64 [gate_blocks]`.
    pub gate_count: usize,
    /// `u32 [1]`: the gate's ticket (`aiec_fwd_gate`'s `done`).
    pub gate_done: usize,
    /// One `AiecTargetStatus`.
    pub status: usize,
    /// `AiecRowPart [B * logits_tiles]` ([`ROW_PART_BYTES`] each).
    pub row_parts: usize,
    /// `u32 [logits_groups * logits_tiles]`: a ticket per 64 x 64 logits tile
    /// (`aiec_fwd_logits`'s `tickets`, read where its sums are split).
    pub logits_tickets: usize,
    /// `f32 [logits_split_room, B, K]`: the partial logits of slices 2 and on
    /// (`aiec_fwd_logits`'s `slices`, any content; none where
    /// [`logits_split_room`] is 0).
    pub logits_slices: usize,
    /// Total bytes.
    pub bytes: usize,
}

impl ForwardScratch {
    /// The layout for `shape`.
    pub fn of(shape: &AiecShape) -> ForwardScratch {
        let g = gate_blocks(shape);
        let up16 = |n: usize| n.div_ceil(16) * 16;
        let gate_count = up16(4 * g);
        let gate_done = gate_count + 8 * g;
        let status = up16(gate_done + 4);
        let row_parts = status + 32;
        let logits_tickets = row_parts + shape.batch as usize * logits_tiles(shape) * ROW_PART_BYTES;
        let tickets = 4 * logits_groups(shape) * logits_tiles(shape);
        let logits_slices = (logits_tickets + tickets).div_ceil(16) * 16;
        let slices = 4 * logits_split_room(shape) as usize * (shape.batch * shape.classes) as usize;
        ForwardScratch {
            gate_sum_sq: 0,
            gate_count,
            gate_done,
            status,
            row_parts,
            logits_tickets,
            logits_slices,
            bytes: logits_slices + slices,
        }
    }
}

/// The alignment, in bytes, the forward scratch needs.
pub const SCRATCH_ALIGN: usize = 8;

/// Element counts of every buffer of one layer's step (bytes for `scratch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// `u32` keep words.
    pub keep: usize,
    /// `B * C` (`v`, `mask`, `dv`).
    pub bc: usize,
    /// `B * K` (`logits`, `g`).
    pub bk: usize,
    /// `B` (`ce`, targets).
    pub batch: usize,
    /// Bytes of the forward scratch.
    pub scratch_bytes: usize,
    /// The first bytes of the forward scratch, which must be zero before its first use (the
    /// tickets, [`ForwardScratch::logits_slices`]); the rest, the split logits' slices, needs no
    /// content, so a caller that allocates the scratch each step zeroes only these.
    pub scratch_zero_bytes: usize,
}

impl Sizes {
    /// The sizes for an input planned as `dims` with `classes` (`K`).
    pub fn of(dims: &InputDims, classes: usize) -> Sizes {
        let shape = AiecShape::new(dims, classes, 0.0, false);
        let scratch = ForwardScratch::of(&shape);
        Sizes {
            keep: keep_words(&shape),
            bc: dims.batch * dims.channels,
            bk: dims.batch * classes,
            batch: dims.batch,
            scratch_bytes: scratch.bytes,
            scratch_zero_bytes: scratch.logits_slices,
        }
    }
}

/// A shape for the unit tests of the plans and layouts: update every step, `tau = 0`, no flags.
#[cfg(test)]
pub(crate) fn test_shape(pool: Pool, b: u64, p: u64, c: u64, k: u64) -> AiecShape {
    AiecShape {
        batch: b,
        positions: p,
        channels: c,
        classes: k,
        pool: crate::params::pool_code(pool),
        update: 1,
        tau: 0.0,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::test_shape as shape;

    #[test]
    fn forward_scratch_parts_are_aligned_and_disjoint() {
        for s in [
            shape(Pool::Token, 256, 197, 3072, 1000),
            shape(Pool::None, 3, 1, 5, 2),
            shape(Pool::None, 9, 1, 1, 1),
        ] {
            let l = ForwardScratch::of(&s);
            let g = gate_blocks(&s);
            assert!(l.gate_count % 16 == 0 && l.status % 16 == 0 && l.row_parts % 16 == 0);
            assert!(l.gate_sum_sq + 4 * g <= l.gate_count);
            assert!(l.gate_count + 8 * g <= l.gate_done);
            assert!(l.gate_done + 4 <= l.status);
            assert!(l.status + 32 <= l.row_parts);
            assert_eq!(l.logits_tickets, l.row_parts + s.batch as usize * logits_tiles(&s) * ROW_PART_BYTES);
            assert!(l.logits_tickets % 8 == 0);
            assert!(l.logits_tickets + 4 * logits_groups(&s) * logits_tiles(&s) <= l.logits_slices);
            assert!(l.logits_slices % 16 == 0);
            let slices = 4 * logits_split_room(&s) as usize * (s.batch * s.classes) as usize;
            assert_eq!(l.bytes, l.logits_slices + slices);
        }
    }

    #[test]
    fn forward_scratch_has_room_for_the_logits_split_of_few_tiles() {
        // ViT-B's logits: 2 x 16 blocks of 128 x 64 on 160 SMs would split in 5: room for 3 slices.
        let vit_b = shape(Pool::Token, 256, 197, 3072, 1000);
        assert_eq!(logits_split_room(&vit_b), 3);
        let l = ForwardScratch::of(&vit_b);
        assert_eq!(l.bytes - l.logits_slices, 3 * 256 * 1000 * 4);
        let dims = InputDims::new(Pool::Token, 3072, &[256, 197, 3072]).unwrap();
        let sizes = Sizes::of(&dims, 1000);
        assert_eq!((sizes.scratch_zero_bytes, sizes.scratch_bytes), (l.logits_slices, l.bytes));
        // vit_tiny: 2 x 2 blocks, 768 channels (6 slices of 128): room for 4.
        assert_eq!(logits_split_room(&shape(Pool::Token, 256, 65, 768, 100)), 4);
        // None where the blocks fill 160 SMs (10 x 16), or the channels keep at most two slices.
        assert_eq!(logits_split_room(&shape(Pool::None, 1280, 1, 3072, 1000)), 0);
        assert_eq!(logits_split_room(&shape(Pool::None, 256, 1, 383, 1000)), 0);
        assert_eq!(logits_split_room(&shape(Pool::None, 256, 1, 384, 1000)), 1);
        assert_eq!(logits_split_room(&shape(Pool::None, 0, 1, 4096, 10)), 0, "an empty batch");
        // The room stays near 160 * 128 * 64 floats whatever the shape.
        for (b, c, k) in [(1, 1 << 20, 1), (128, 4096, 64), (1000, 4096, 700), (16, 1024, 9000)] {
            let s = shape(Pool::None, b, 1, c, k);
            assert!(logits_split_room(&s) * b * k <= 160 * 128 * 64, "{b} x {c} x {k}");
        }
    }

    #[test]
    fn keep_bits_are_row_padded() {
        // tokens: 15 rows of 7 channels, one word each; avg_hw: rows of P = 49 positions, two words each.
        assert_eq!(keep_words(&shape(Pool::Token, 3, 5, 7, 2)), 15);
        let h = KeepLayout::of(&shape(Pool::AvgHw, 2, 49, 3, 2));
        assert_eq!((h.rows, h.row_len, h.words_per_row, h.words()), (6, 49, 2, 12));
        assert_eq!(h.bit(0), (0, 0));
        assert_eq!(h.bit(31), (0, 31));
        assert_eq!(h.bit(32), (1, 0));
        assert_eq!(h.bit(48), (1, 16));
        assert_eq!(h.bit(49), (2, 0), "row 1 starts at a word");
        assert_eq!(h.bit(5 * 49 + 48), (11, 16));
        // Rows of a multiple of 32 pack densely: ceil(n / 32) words.
        let s = shape(Pool::Token, 256, 197, 3072, 1000);
        assert_eq!(keep_words(&s), (256 * 197 * 3072usize) / 32);
        assert_eq!(keep_words(&shape(Pool::None, 4, 1, 33, 2)), 8);
        assert_eq!(keep_words(&shape(Pool::None, 0, 1, 33, 2)), 0);
    }
}
