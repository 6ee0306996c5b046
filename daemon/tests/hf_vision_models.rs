//! The HF-format loading path for bigger vision models (CLIP-vision, DINOv2), on tiny randomly
//! initialised checkpoints written by the tests themselves (real ones cannot be downloaded here).
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use sotalign::encoders::{ImageEncoder, ImageModelKind};

/// A small real PNG to push through the whole image path.
fn write_png(path: &Path) {
    let img = image::RgbaImage::from_fn(40, 30, |x, y| {
        image::Rgba([(x * 6) as u8, (y * 8) as u8, 90, 255])
    });
    img.save(path).unwrap();
}

#[test]
fn clip_vision_directory_loads_and_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let (hidden, layers, heads, image, patch, proj) =
        (32usize, 2usize, 4usize, 32usize, 16usize, 24usize);
    let config = serde_json::json!({
        "model_type": "clip",
        "projection_dim": proj,
        "vision_config": {
            "hidden_size": hidden, "intermediate_size": 64, "num_hidden_layers": layers,
            "num_attention_heads": heads, "image_size": image, "patch_size": patch, "hidden_act": "quick_gelu"
        }
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    // Let candle's own module request every tensor it needs, randomly initialised, then save.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    vb.get_with_hints(
        hidden,
        "vision_model.embeddings.class_embedding",
        Init::Randn {
            mean: 0.,
            stdev: 0.02,
        },
    )
    .unwrap();
    let cfg = candle_transformers::models::clip::vision_model::ClipVisionConfig {
        embed_dim: hidden,
        activation: candle_transformers::models::clip::text_model::Activation::QuickGelu,
        intermediate_size: 64,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        projection_dim: proj,
        num_channels: 3,
        image_size: image,
        patch_size: patch,
    };
    candle_transformers::models::clip::vision_model::ClipVisionTransformer::new(
        vb.pp("vision_model"),
        &cfg,
    )
    .unwrap();
    candle_nn::linear_no_bias(hidden, proj, vb.pp("visual_projection")).unwrap();
    vm.save(dir.path().join("model.safetensors")).unwrap();

    let enc = ImageEncoder::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(enc.kind(), ImageModelKind::ClipVision);
    assert_eq!(enc.dim(), proj);
    assert_eq!(enc.input_size(), image);
    let png = dir.path().join("x.png");
    write_png(&png);
    let (m, rep) = enc
        .encode_paths(&[png.clone(), dir.path().join("missing.png"), png], 2)
        .unwrap();
    assert_eq!((m.rows, m.cols), (2, proj));
    assert_eq!(rep.kept, vec![0, 2]);
    assert_eq!(rep.skipped.len(), 1);
    assert!(m.data.iter().all(|v| v.is_finite()));
    assert_eq!(m.row(0), m.row(1), "same image, same row");
    assert!(enc.id().starts_with("image:clip-"));
}

#[test]
fn dinov2_hf_directory_is_renamed_and_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let (d, layers, heads) = (24usize, 2usize, 4usize);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::json!({"model_type": "dinov2", "hidden_size": d, "num_hidden_layers": layers,
            "num_attention_heads": heads, "patch_size": 14, "image_size": 518, "mlp_ratio": 4})
        .to_string(),
    )
    .unwrap();
    // HF transformers' Dinov2Model tensor names.
    let dev = Device::Cpu;
    let r = |shape: &[usize]| Tensor::randn(0f32, 0.05, shape, &dev).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("embeddings.cls_token".into(), r(&[1, 1, d]));
    t.insert("embeddings.mask_token".into(), r(&[1, d]));
    t.insert(
        "embeddings.position_embeddings".into(),
        r(&[1, 37 * 37 + 1, d]),
    );
    t.insert(
        "embeddings.patch_embeddings.projection.weight".into(),
        r(&[d, 3, 14, 14]),
    );
    t.insert(
        "embeddings.patch_embeddings.projection.bias".into(),
        r(&[d]),
    );
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for n in ["norm1", "norm2"] {
            t.insert(
                format!("{p}.{n}.weight"),
                Tensor::ones(d, DType::F32, &dev).unwrap(),
            );
            t.insert(format!("{p}.{n}.bias"), r(&[d]));
        }
        for n in ["query", "key", "value"] {
            t.insert(format!("{p}.attention.attention.{n}.weight"), r(&[d, d]));
            t.insert(format!("{p}.attention.attention.{n}.bias"), r(&[d]));
        }
        t.insert(format!("{p}.attention.output.dense.weight"), r(&[d, d]));
        t.insert(format!("{p}.attention.output.dense.bias"), r(&[d]));
        t.insert(format!("{p}.layer_scale1.lambda1"), r(&[d]));
        t.insert(format!("{p}.layer_scale2.lambda1"), r(&[d]));
        t.insert(format!("{p}.mlp.fc1.weight"), r(&[4 * d, d]));
        t.insert(format!("{p}.mlp.fc1.bias"), r(&[4 * d]));
        t.insert(format!("{p}.mlp.fc2.weight"), r(&[d, 4 * d]));
        t.insert(format!("{p}.mlp.fc2.bias"), r(&[d]));
    }
    t.insert(
        "layernorm.weight".into(),
        Tensor::ones(d, DType::F32, &dev).unwrap(),
    );
    t.insert(
        "layernorm.bias".into(),
        Tensor::zeros(d, DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();

    let enc = ImageEncoder::load(dir.path(), &dev).unwrap();
    assert_eq!(enc.kind(), ImageModelKind::Dinov2);
    assert_eq!(enc.dim(), d);
    let png = dir.path().join("x.png");
    write_png(&png);
    let (m, rep) = enc.encode_paths(std::slice::from_ref(&png), 4).unwrap();
    assert!(rep.skipped.is_empty());
    assert_eq!((m.rows, m.cols), (1, d));
    // The feature is a LayerNorm output with unit gain and zero bias: mean 0, variance 1.
    let row = m.row(0);
    let mean = row.iter().sum::<f32>() / d as f32;
    let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / d as f32;
    assert!(
        mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-2,
        "mean {mean} var {var}"
    );

    // A missing tensor is a clear error naming it.
    t.remove("encoder.layer.1.mlp.fc2.bias");
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let e = ImageEncoder::load(dir.path(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encoder.layer.1.mlp.fc2.bias"), "{e}");
}

#[test]
fn unknown_model_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "resnet"}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    let e = ImageEncoder::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("resnet"), "{e}");
}
