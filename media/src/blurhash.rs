//! BlurHash (https://blurha.sh): a short string a client turns into a blurred placeholder
//! while the real image loads. Encoder only, after the reference implementation.

const CHARS: &[u8; 83] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

fn srgb_to_linear(v: u8) -> f32 {
    let v = f32::from(v) / 255.0;
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f32) -> u32 {
    let v = v.clamp(0.0, 1.0);
    let s = if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    (s * 255.0 + 0.5) as u32
}

fn sign_pow(v: f32, exp: f32) -> f32 {
    v.abs().powf(exp).copysign(v)
}

fn base83(mut value: u32, length: u32, out: &mut String) {
    let mut digits = Vec::with_capacity(length as usize);
    for _ in 0..length {
        digits.push(CHARS[(value % 83) as usize] as char);
        value /= 83;
    }
    out.extend(digits.iter().rev());
}

/// Encodes an RGBA image (`width * height * 4` bytes) with `cx` x `cy` components (1..=9).
pub fn encode(cx: u32, cy: u32, width: u32, height: u32, rgba: &[u8]) -> String {
    assert!((1..=9).contains(&cx) && (1..=9).contains(&cy));
    assert_eq!(rgba.len(), width as usize * height as usize * 4);
    let (w, h) = (width as usize, height as usize);
    // Linearise once, then sample every pixel for each component.
    let linear: Vec<[f32; 3]> = rgba
        .chunks_exact(4)
        .map(|p| {
            [
                srgb_to_linear(p[0]),
                srgb_to_linear(p[1]),
                srgb_to_linear(p[2]),
            ]
        })
        .collect();
    let mut factors: Vec<[f32; 3]> = Vec::with_capacity((cx * cy) as usize);
    let pi = std::f32::consts::PI;
    for j in 0..cy {
        for i in 0..cx {
            let norm = if i == 0 && j == 0 { 1.0 } else { 2.0 };
            let cos_x: Vec<f32> = (0..w)
                .map(|x| (pi * i as f32 * x as f32 / w as f32).cos())
                .collect();
            let mut sum = [0f32; 3];
            for y in 0..h {
                let cos_y = (pi * j as f32 * y as f32 / h as f32).cos();
                let row = &linear[y * w..(y + 1) * w];
                for (x, p) in row.iter().enumerate() {
                    let basis = cos_x[x] * cos_y;
                    sum[0] += basis * p[0];
                    sum[1] += basis * p[1];
                    sum[2] += basis * p[2];
                }
            }
            let scale = norm / (w * h) as f32;
            factors.push([sum[0] * scale, sum[1] * scale, sum[2] * scale]);
        }
    }
    let mut out = String::with_capacity(6 + 2 * factors.len());
    base83((cx - 1) + (cy - 1) * 9, 1, &mut out);
    let dc = factors[0];
    let ac = &factors[1..];
    let max_ac = ac
        .iter()
        .flat_map(|f| f.iter().map(|v| v.abs()))
        .fold(0f32, f32::max);
    let (quant_max, max_value) = if ac.is_empty() {
        (0, 1.0)
    } else {
        let q = ((max_ac * 166.0 - 0.5).floor() as i32).clamp(0, 82) as u32;
        (q, (q as f32 + 1.0) / 166.0)
    };
    base83(quant_max, 1, &mut out);
    let dc_value =
        (linear_to_srgb(dc[0]) << 16) | (linear_to_srgb(dc[1]) << 8) | linear_to_srgb(dc[2]);
    base83(dc_value, 4, &mut out);
    for f in ac {
        let q = |v: f32| -> u32 {
            ((sign_pow(v / max_value, 0.5) * 9.0 + 9.5).floor() as i32).clamp(0, 18) as u32
        };
        base83(q(f[0]) * 19 * 19 + q(f[1]) * 19 + q(f[2]), 2, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_image_has_a_flat_hash() {
        let rgba: Vec<u8> = std::iter::repeat_n([255u8, 0, 0, 255], 16)
            .flatten()
            .collect();
        let hash = encode(4, 3, 4, 4, &rgba);
        assert_eq!(hash.len(), 4 + 2 * 12);
        // Size flag for 4x3 (L), then pure red as the DC value.
        assert!(hash.starts_with('L'), "{hash}");
        let dc = &hash[2..6];
        let mut v = 0u32;
        for c in dc.bytes() {
            v = v * 83 + CHARS.iter().position(|x| *x == c).unwrap() as u32;
        }
        assert_eq!(v, 0xFF0000);
    }
}
