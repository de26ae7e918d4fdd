//! `sweep embed TEXT`: what the sentence encoder of the `imdb-bert` job (all-MiniLM-L6-v2, mean
//! pooling) makes of a text: each token with its vector's size and first values, as a table, then
//! the pooled sentence vector. The model is found like a worker finds it (`--models-dir`, else the
//! Hugging Face Hub).

use anyhow::Context;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use sweep_worker::jobs::nlp::bert::SentenceEncoder;

use super::serve::DataArgs;

#[derive(Args)]
pub struct EmbedArgs {
    /// The text to embed.
    pub text: String,
    /// How many leading values of each vector to print.
    #[arg(long, default_value_t = 5)]
    pub values: usize,
    #[command(flatten)]
    pub data: DataArgs,
}

fn first_values(values: &[f32], n: usize) -> String {
    let mut shown: Vec<String> = values.iter().take(n).map(|v| format!("{v:+.4}")).collect();
    if values.len() > n {
        shown.push("...".into());
    }
    shown.join(" ")
}

/// Loads the encoder and prints the table (on a blocking thread: the model runs for a while).
pub async fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || print_embedding(&args)).await.context("embedding thread")?
}

fn print_embedding(args: &EmbedArgs) -> anyhow::Result<()> {
    let encoder = SentenceEncoder::load(&args.data.paths(), &candle_core::Device::Cpu)
        .context("loading the sentence encoder (all-MiniLM-L6-v2)")?;
    let tokens = encoder.token_vectors(&args.text).context("running the encoder")?;
    let vectors = tokens.vectors.to_vec2::<f32>()?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["#", "token", "id", "size", "first values"]);
    for (i, (token, vector)) in tokens.tokens.iter().zip(&vectors).enumerate() {
        table.add_row(vec![
            Cell::new(i).set_alignment(CellAlignment::Right),
            Cell::new(&token.text),
            Cell::new(token.id).set_alignment(CellAlignment::Right),
            Cell::new(vector.len()).set_alignment(CellAlignment::Right),
            Cell::new(first_values(vector, args.values)),
        ]);
    }
    println!("{table}");
    let sentence = encoder.embed_batch(&[&args.text], encoder.max_positions()).context("pooling")?.to_vec2::<f32>()?;
    let sentence = sentence.first().context("the encoder returned no sentence vector")?;
    println!(
        "sentence vector (mean of {} token vectors): size {}, first values {}",
        tokens.tokens.len(),
        sentence.len(),
        first_values(sentence, args.values)
    );
    Ok(())
}
