// Fragment, included with `#include cos_sin`: cos and sin of a RoPE angle
// (position · inverse frequency, up to hundreds of thousands of radians),
// reduced to [-π, π] first. GPUs' sin and cos are accurate only near zero:
// NVIDIA's Vulkan driver was off by more than 2e-5 at 300 rad, and the
// reference takes sin and cos of the same f32 angle exactly. Cody-Waite:
// 2π in three parts, the first two short enough (8 bits) that k · part is
// exact for every k below 2^16, so only the last product rounds.

const TWO_PI_A: f32 = 6.28125;
const TWO_PI_B: f32 = 0.0019378662109375;
const TWO_PI_C: f32 = -2.559031372584286e-6;
const INV_TWO_PI: f32 = 0.15915494309189535;

fn cos_sin(angle: f32) -> vec2<f32> {
    let k = round(angle * INV_TWO_PI);
    let r = ((angle - k * TWO_PI_A) - k * TWO_PI_B) - k * TWO_PI_C;
    return vec2<f32>(cos(r), sin(r));
}
