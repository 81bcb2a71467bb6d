// Reference run of a TF.js graph model with @tensorflow/tfjs's pure-JavaScript CPU backend.
//
// Usage: node tfjs_reference.cjs TFJS_DIR MODEL_JSON INPUT_F32 N OUTPUT_F32 [NODE ...]
//   TFJS_DIR    a directory holding node_modules/@tensorflow/tfjs (installed with npm)
//   MODEL_JSON  the graph model's model.json; its weight shards sit beside it
//   INPUT_F32   N x H x W x C float32 little-endian values, NHWC, fed to the model's input
//   OUTPUT_F32  written: the requested nodes' values, float32, one after the other
//   NODE        node names to fetch (default: the model's outputs)
// Prints one JSON line: {"nodes": [{"name": ..., "shape": [...]}, ...], "backend": "cpu"}.
'use strict';
const fs = require('fs');
const path = require('path');

async function main() {
  const [tfjsDir, modelJson, inputPath, nText, outputPath, ...nodes] = process.argv.slice(2);
  if (!outputPath) throw new Error('usage: tfjs_reference.cjs TFJS_DIR MODEL_JSON INPUT N OUTPUT [NODE...]');
  const tf = require(path.join(tfjsDir, 'node_modules', '@tensorflow', 'tfjs'));
  await tf.setBackend('cpu');
  const model = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const specs = [];
  const shards = [];
  for (const group of model.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) shards.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const graph = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: model.modelTopology, weightSpecs: specs, weightData,
    format: model.format, generatedBy: model.generatedBy, convertedBy: model.convertedBy,
  }));
  const n = parseInt(nText, 10);
  const shape = graph.inputs[0].shape.slice(1);
  const raw = fs.readFileSync(inputPath);
  const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor(values, [n, ...shape], 'float32');
  const names = nodes.length ? nodes : graph.outputs.map((o) => o.name);
  let result = graph.execute(input, names);
  if (!Array.isArray(result)) result = [result];
  const out = [];
  const info = [];
  for (let i = 0; i < result.length; i += 1) {
    out.push(Buffer.from((await result[i].data()).buffer));
    info.push({ name: names[i], shape: result[i].shape });
  }
  fs.writeFileSync(outputPath, Buffer.concat(out));
  process.stdout.write(JSON.stringify({ nodes: info, backend: tf.getBackend(), version: tf.version.tfjs }) + '\n');
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err) + '\n'); process.exit(1); });
