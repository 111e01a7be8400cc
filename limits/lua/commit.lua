-- Log sent calls (when no decision batch of the upstream carries them):
-- the commit section alone.  Reply: now.

--! include prelude.lua
commits(1, 1)
return now
