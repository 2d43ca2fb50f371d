// Fragment: the values of one K-quant sub-block from its quads, already
// loaded; included (in the includer's mode) by dequant_body, a sub-block at
// a time, and by dequant_block, whole blocks.
// Q4_K, Q5_K: nibbles at `shift` of a, c, times d, minus m; Q5_K's fifth
// bits are bit s of each byte of ha, hc.
// Q6_K: low 4 bits of la, lc at ns and high 2 of ha, hc at hs, minus 32,
// times d0 (first 16 values) or d1.
#if Q4_K
    EMIT(0, nib4(a.x, shift) * d - m);
    EMIT(1, nib4(a.y, shift) * d - m);
    EMIT(2, nib4(a.z, shift) * d - m);
    EMIT(3, nib4(a.w, shift) * d - m);
    EMIT(4, nib4(c.x, shift) * d - m);
    EMIT(5, nib4(c.y, shift) * d - m);
    EMIT(6, nib4(c.z, shift) * d - m);
    EMIT(7, nib4(c.w, shift) * d - m);
#endif
#if Q5_K
    EMIT(0, q5k4(a.x, shift, ha.x, s) * d - m);
    EMIT(1, q5k4(a.y, shift, ha.y, s) * d - m);
    EMIT(2, q5k4(a.z, shift, ha.z, s) * d - m);
    EMIT(3, q5k4(a.w, shift, ha.w, s) * d - m);
    EMIT(4, q5k4(c.x, shift, hc.x, s) * d - m);
    EMIT(5, q5k4(c.y, shift, hc.y, s) * d - m);
    EMIT(6, q5k4(c.z, shift, hc.z, s) * d - m);
    EMIT(7, q5k4(c.w, shift, hc.w, s) * d - m);
#endif
#if Q6_K
    EMIT(0, q6x4(la.x, ha.x, ns, hs) * d0);
    EMIT(1, q6x4(la.y, ha.y, ns, hs) * d0);
    EMIT(2, q6x4(la.z, ha.z, ns, hs) * d0);
    EMIT(3, q6x4(la.w, ha.w, ns, hs) * d0);
    EMIT(4, q6x4(lc.x, hc.x, ns, hs) * d1);
    EMIT(5, q6x4(lc.y, hc.y, ns, hs) * d1);
    EMIT(6, q6x4(lc.z, hc.z, ns, hs) * d1);
    EMIT(7, q6x4(lc.w, hc.w, ns, hs) * d1);
#endif
