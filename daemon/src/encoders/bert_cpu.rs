//! Loading BERT weights for the CPU forward pass ([`sotalign_kernels::bert::Bert`]): names as
//! candle-transformers' `BertModel::load` expects them, read through a candle `VarBuilder`, so
//! the same checkpoint feeds both. The tests here hold the kernel to candle's model.
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use sotalign_kernels::bert::{Activation, Bert, BertWeights, Layer, LayerNorm};

use super::{EncoderError, host_f32};

fn layer_norm(vb: &VarBuilder, d: usize) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm {
        gamma: host_f32(&vb.get(d, "weight")?)?,
        beta: host_f32(&vb.get(d, "bias")?)?,
    })
}

/// A linear layer's (weight (out x in) row-major, bias).
fn linear(vb: &VarBuilder, din: usize, dout: usize) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        host_f32(&vb.get((dout, din), "weight")?)?,
        host_f32(&vb.get(dout, "bias")?)?,
    ))
}

/// Load BERT weights (with or without a `bert.` prefix) into the CPU kernel.
pub fn load(vb: VarBuilder, config: &Config) -> Result<Bert, EncoderError> {
    let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
        vb
    } else {
        vb.pp("bert")
    };
    let d = config.hidden_size;
    let inter = config.intermediate_size;
    let e = vb.pp("embeddings");
    let word = host_f32(&e.get((config.vocab_size, d), "word_embeddings.weight")?)?;
    let position = host_f32(&e.get(
        (config.max_position_embeddings, d),
        "position_embeddings.weight",
    )?)?;
    let types = host_f32(&e.get((config.type_vocab_size, d), "token_type_embeddings.weight")?)?;
    if types.len() < d {
        return Err(candle_core::Error::Msg("no token type embeddings".into()).into());
    }
    let emb_ln = layer_norm(&e.pp("LayerNorm"), d)?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let l = vb.pp(format!("encoder.layer.{i}"));
        let a = l.pp("attention");
        let (qw, qb) = linear(&a.pp("self.query"), d, d)?;
        let (kw, kb) = linear(&a.pp("self.key"), d, d)?;
        let (vw, vbias) = linear(&a.pp("self.value"), d, d)?;
        let (out_w, out_b) = linear(&a.pp("output.dense"), d, d)?;
        let (inter_w, inter_b) = linear(&l.pp("intermediate.dense"), d, inter)?;
        let (down_w, down_b) = linear(&l.pp("output.dense"), inter, d)?;
        layers.push(Layer {
            qkv_w: [qw, kw, vw].concat(),
            qkv_b: [qb, kb, vbias].concat(),
            out_w,
            out_b,
            ln1: layer_norm(&a.pp("output.LayerNorm"), d)?,
            inter_w,
            inter_b,
            down_w,
            down_b,
            ln2: layer_norm(&l.pp("output.LayerNorm"), d)?,
        });
    }
    Ok(Bert::new(BertWeights {
        word,
        position,
        token_type0: types[..d].to_vec(),
        emb_ln,
        layers,
        hidden: d,
        heads: config.num_attention_heads,
        inter,
        eps: config.layer_norm_eps as f32,
        act: match config.hidden_act {
            HiddenAct::Gelu => Activation::GeluErf,
            HiddenAct::GeluApproximate => Activation::GeluTanh,
            HiddenAct::Relu => Activation::Relu,
        },
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::BertModel;
    use std::collections::HashMap;

    fn tiny_config() -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "max_position_embeddings": 40, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "classifier_dropout": null, "model_type": "bert"
        }))
        .unwrap()
    }

    /// Random weights for every tensor `BertModel::load` asks for.
    fn tiny_weights(c: &Config, dev: &Device) -> HashMap<String, Tensor> {
        let mut t = HashMap::new();
        let mut seed = 0u64;
        let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            seed += 1;
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n as u64)
                .map(|i| {
                    let z = ((i + 1) * 2_654_435_761 + seed * 7_919) % 1000;
                    offset + scale * (z as f32 / 500.0 - 1.0)
                })
                .collect();
            t.insert(name, Tensor::from_vec(v, shape, dev).unwrap());
        };
        let (d, i) = (c.hidden_size, c.intermediate_size);
        put(
            "embeddings.word_embeddings.weight".into(),
            vec![c.vocab_size, d],
            1.0,
            0.0,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, d],
            0.5,
            0.0,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, d],
            0.5,
            0.0,
        );
        let ln = |put: &mut dyn FnMut(String, Vec<usize>, f32, f32), p: &str| {
            put(format!("{p}.weight"), vec![d], 0.3, 1.0);
            put(format!("{p}.bias"), vec![d], 0.2, 0.0);
        };
        ln(&mut put, "embeddings.LayerNorm");
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, dout, din) in [
                ("attention.self.query", d, d),
                ("attention.self.key", d, d),
                ("attention.self.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", i, d),
                ("output.dense", d, i),
            ] {
                let s = 1.5 / (din as f32).sqrt();
                put(format!("{p}.{name}.weight"), vec![dout, din], s, 0.0);
                put(format!("{p}.{name}.bias"), vec![dout], 0.1, 0.0);
            }
            ln(&mut put, &format!("{p}.attention.output.LayerNorm"));
            ln(&mut put, &format!("{p}.output.LayerNorm"));
        }
        t
    }

    /// Same pooled embeddings as candle-transformers' BertModel on a padded, masked batch.
    #[test]
    fn matches_candle_bert_on_padded_batch() {
        let dev = Device::Cpu;
        let c = tiny_config();
        let w = tiny_weights(&c, &dev);
        let reference =
            BertModel::load(VarBuilder::from_tensors(w.clone(), DType::F32, &dev), &c).unwrap();
        let fast = load(VarBuilder::from_tensors(w, DType::F32, &dev), &c).unwrap();
        let seqs: Vec<Vec<u32>> = vec![
            vec![1, 5, 9, 2],
            vec![1, 7, 2],
            vec![
                1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 2,
            ],
            vec![1, 2],
            vec![1, 49, 48, 47, 2],
        ];
        let len = seqs.iter().map(|s| s.len()).max().unwrap();
        let b = seqs.len();
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, s) in seqs.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, len), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (b, len), &dev).unwrap();
        let hidden = reference
            .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
            .unwrap();
        let want = hidden
            .broadcast_mul(&mask.unsqueeze(2).unwrap())
            .unwrap()
            .sum(1)
            .unwrap()
            .broadcast_div(&mask.sum_keepdim(1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let got = fast.forward(&refs).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff / scale < 1e-5, "max diff {diff} (scale {scale})");
        let one_worker = fast.forward_one_worker(&refs).unwrap();
        assert_eq!(one_worker.len(), got.len());
        let d1 = one_worker
            .iter()
            .zip(&got)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d1 / scale < 1e-5, "one-worker forward differs by {d1}");
        // One sequence at a time gives the same rows as the batch.
        for (k, s) in refs.iter().enumerate() {
            let one = fast.forward(std::slice::from_ref(s)).unwrap();
            let d = one
                .iter()
                .zip(&got[k * c.hidden_size..])
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d / scale < 1e-5, "sequence {k} alone differs by {d}");
        }
    }
}
