// Fragment: the values of one K-quant sub-block from its quads, already
// loaded; included (in the includer's mode) by dequant_body, a sub-block at
// a time, and by dequant_block, whole blocks.
// Q4_K, Q5_K: nibbles at `shift` of a, c, times d, minus m; Q5_K's fifth
// bits are bit s of each byte of ha, hc.
// Q6_K: low 4 bits of la, lc at ns and high 2 of ha, hc at hs, minus 32,
// times d0 (first 16 values) or d1.
#if Q4_K
    EMIT_SCALED(0, nibs(a.x, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(1, nibs(a.y, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(2, nibs(a.z, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(3, nibs(a.w, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(4, nibs(c.x, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(5, nibs(c.y, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(6, nibs(c.z, shift), BYTE_SCALE, d, -m);
    EMIT_SCALED(7, nibs(c.w, shift), BYTE_SCALE, d, -m);
    EMIT_DONE(d, -m);
#endif
#if Q5_K
    EMIT_SCALED(0, fields(q5kw(a.x, shift, ha.x, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(1, fields(q5kw(a.y, shift, ha.y, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(2, fields(q5kw(a.z, shift, ha.z, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(3, fields(q5kw(a.w, shift, ha.w, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(4, fields(q5kw(c.x, shift, hc.x, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(5, fields(q5kw(c.y, shift, hc.y, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(6, fields(q5kw(c.z, shift, hc.z, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_SCALED(7, fields(q5kw(c.w, shift, hc.w, s), 0x1fu), BYTE_SCALE, d, -m);
    EMIT_DONE(d, -m);
#endif
#if Q6_K
    EMIT_SCALED(0, fields(q6w(la.x, ha.x, ns, hs), 0x3fu), BYTE_SCALE, d0, -32.0 * d0);
    EMIT_SCALED(1, fields(q6w(la.y, ha.y, ns, hs), 0x3fu), BYTE_SCALE, d0, -32.0 * d0);
    EMIT_SCALED(2, fields(q6w(la.z, ha.z, ns, hs), 0x3fu), BYTE_SCALE, d0, -32.0 * d0);
    EMIT_SCALED(3, fields(q6w(la.w, ha.w, ns, hs), 0x3fu), BYTE_SCALE, d0, -32.0 * d0);
    EMIT_DONE(d0, -32.0 * d0, 0, 3);
    EMIT_SCALED(4, fields(q6w(lc.x, hc.x, ns, hs), 0x3fu), BYTE_SCALE, d1, -32.0 * d1);
    EMIT_SCALED(5, fields(q6w(lc.y, hc.y, ns, hs), 0x3fu), BYTE_SCALE, d1, -32.0 * d1);
    EMIT_SCALED(6, fields(q6w(lc.z, hc.z, ns, hs), 0x3fu), BYTE_SCALE, d1, -32.0 * d1);
    EMIT_SCALED(7, fields(q6w(lc.w, hc.w, ns, hs), 0x3fu), BYTE_SCALE, d1, -32.0 * d1);
    EMIT_DONE(d1, -32.0 * d1, 4, 7);
#endif
