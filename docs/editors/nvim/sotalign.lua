-- sotalign as a language server for JSONL manifests (Neovim 0.7 or newer).
--
-- Copy this file to ~/.config/nvim/lua/sotalign.lua and add to your init.lua:
--     require('sotalign').setup({ cmd = { 'sotalign', 'serve', '--stdio' } })
-- Every *.jsonl buffer then attaches to one `sotalign serve --stdio` per directory:
-- diagnostics on suspected pairs (`:lua vim.diagnostic.setloclist()`), hover on an image path
-- or a caption (`K` if mapped to vim.lsp.buf.hover), and a quick fix replacing a suspected
-- caption (`:lua vim.lsp.buf.code_action()`).
local M = {}

M.clients = {}

function M.setup(opts)
  opts = opts or {}
  local cmd = opts.cmd or { 'sotalign', 'serve', '--stdio' }
  local pattern = opts.pattern or '*.jsonl'
  vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile' }, {
    pattern = pattern,
    callback = function(args)
      local root = vim.fn.fnamemodify(vim.api.nvim_buf_get_name(args.buf), ':p:h')
      local id = M.clients[root]
      if id == nil or vim.lsp.get_client_by_id(id) == nil then
        -- start_client (not vim.lsp.start, 0.8+) so that Debian's Neovim 0.7 works too.
        id = vim.lsp.start_client({
          name = 'sotalign',
          cmd = cmd,
          root_dir = root,
          on_exit = function() M.clients[root] = nil end,
        })
        M.clients[root] = id
      end
      if id then
        vim.lsp.buf_attach_client(args.buf, id)
      end
    end,
  })
end

return M
