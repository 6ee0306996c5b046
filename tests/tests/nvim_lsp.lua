-- Driver of tests/tests/nvim_lsp.rs: Neovim is the LSP client, this script only waits and
-- reports; the Rust test asserts. Loads the shipped config (docs/editors/nvim/sotalign.lua),
-- opens the manifest, waits for the server's diagnostics, asks for hover and for the code action
-- on the planted line, applies it, and writes what it saw as JSON to $RESULT.
local repo = os.getenv('REPO')
local result = os.getenv('RESULT')
local planted = tonumber(os.getenv('PLANTED_LINE')) -- 0-based
package.path = repo .. '/docs/editors/nvim/?.lua;' .. package.path
require('sotalign').setup({ cmd = { os.getenv('SOTALIGN_BIN'), 'serve', '--stdio', '--data-dir', os.getenv('DATA_DIR') } })

local out = { events = {} }
local function finish()
  local f = assert(io.open(result, 'w'))
  f:write(vim.fn.json_encode(out))
  f:close()
  vim.cmd('qa!')
end

vim.cmd('edit ' .. vim.fn.fnameescape(os.getenv('MANIFEST')))
local buf = vim.api.nvim_get_current_buf()

local got = vim.wait(120000, function()
  return #vim.diagnostic.get(buf, { severity = vim.diagnostic.severity.WARN }) > 0
end, 100)
out.waited = got
out.diagnostics = {}
for _, d in ipairs(vim.diagnostic.get(buf)) do
  table.insert(out.diagnostics, { line = d.lnum, col = d.col, severity = d.severity, message = d.message, source = d.source })
end

local function request(method, params)
  local res = vim.lsp.buf_request_sync(buf, method, params, 60000) or {}
  for _, r in pairs(res) do
    if r.result then return r.result end
    if r.err then out.events[#out.events + 1] = method .. ': ' .. vim.inspect(r.err) end
  end
  return nil
end

local uri = vim.uri_from_bufnr(buf)
local line = vim.api.nvim_buf_get_lines(buf, planted, planted + 1, false)[1]
out.before = line
local img_col = string.find(line, '"imagePath":"', 1, true)
if img_col then
  -- 0-based column a few characters into the path's value.
  local h = request('textDocument/hover', { textDocument = { uri = uri }, position = { line = planted, character = img_col + 14 } })
  out.hover = h and h.contents and (h.contents.value or h.contents) or vim.NIL
end
local actions = request('textDocument/codeAction', {
  textDocument = { uri = uri },
  range = { start = { line = planted, character = 0 }, ['end'] = { line = planted, character = 0 } },
  context = { diagnostics = {} },
}) or {}
out.actions = {}
for _, a in ipairs(actions) do table.insert(out.actions, a.title) end
if actions[1] and actions[1].edit then
  vim.lsp.util.apply_workspace_edit(actions[1].edit, 'utf-16')
end
out.after = vim.api.nvim_buf_get_lines(buf, planted, planted + 1, false)[1]
-- After the fix the server re-audits the changed buffer: the planted line's warning goes away.
out.cleared = vim.wait(60000, function()
  for _, d in ipairs(vim.diagnostic.get(buf, { severity = vim.diagnostic.severity.WARN })) do
    if d.lnum == planted then return false end
  end
  return true
end, 100)
finish()
