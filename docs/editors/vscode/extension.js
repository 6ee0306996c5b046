// Minimal VS Code client for `sotalign serve --stdio`: every *.jsonl file is sent to the daemon,
// which answers with diagnostics, hover and code actions (standard LSP; see docs/PROTOCOL.md).
const vscode = require('vscode');
const { LanguageClient, TransportKind } = require('vscode-languageclient/node');

let client;

function activate(context) {
  const cfg = vscode.workspace.getConfiguration('sotalign');
  const run = { command: cfg.get('path', 'sotalign'), args: cfg.get('args', ['serve', '--stdio']), transport: TransportKind.stdio };
  client = new LanguageClient(
    'sotalign',
    'sotalign',
    { run, debug: run },
    { documentSelector: [{ scheme: 'file', pattern: '**/*.jsonl' }] }
  );
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
