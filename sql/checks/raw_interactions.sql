-- The interactions this run loaded, with what the gate checks beyond the values themselves: whether
-- user and item are known, whether the event was delivered before (by row key: the first copy stays),
-- and whether a return or cancellation follows a purchase of the same item by the same user.
with this_run as (
    select
        *,
        -- a return or cancellation, as staging reads it: a 'return', or a purchase of negative quantity
        coalesce(
            lower(trim(event_type)) = 'return' or (lower(trim(event_type)) = 'purchase' and quantity < 0), false
        ) as is_return
    from raw.interactions
    where _loaded_run_date = $run_date and list_contains($files, _source_file)
),

known_users as (
    select distinct user_id from raw.users where coalesce(_file_date < $run_date, true) and user_id is not null
),

known_items as (
    select distinct item_id from raw.items where coalesce(_file_date < $run_date, true) and item_id is not null
),

same_keys as (
    select interactions._row_key, interactions.user_id, interactions.item_id, interactions.event_type,
        interactions.occurred_at, interactions.order_id, interactions.quantity
    from raw.interactions
    semi join this_run using (user_id, item_id, event_type, occurred_at)
    where coalesce(interactions._file_date < $run_date, true)
),

copies as (
    -- order and quantity belong to the event: two orders (or two lines of different quantity) holding
    -- the same item at the same instant are two events, not a delivery of one twice
    select
        _row_key,
        row_number() over (
            partition by user_id, item_id, event_type, occurred_at, order_id, quantity order by _row_key
        ) > 1 as is_duplicate
    from same_keys
),

returns as (
    select _row_key, user_id, item_id, occurred_at
    from this_run
    where is_return
),

bought_before as (
    -- a return whose user bought the item at or before its time, in any file known to this run
    select returns._row_key
    from returns
    semi join (
        select user_id, item_id, occurred_at
        from raw.interactions
        where lower(trim(event_type)) = 'purchase'
            and coalesce(quantity > 0, true)
            and coalesce(_file_date < $run_date, true)
    ) as purchases
        on purchases.user_id = returns.user_id
        and purchases.item_id = returns.item_id
        and purchases.occurred_at <= returns.occurred_at
),

final as (
    select
        this_run._row_key,
        this_run._source_file,
        this_run.user_id,
        this_run.item_id,
        lower(trim(this_run.event_type)) as event_type,
        this_run.occurred_at,
        len(this_run._invalid_columns) as _n_invalid_values,
        case when lower(trim(this_run.event_type)) = 'rating' then this_run.value end as _rating,
        -- a return's value may be negative: it nets out the purchase
        case
            when lower(trim(this_run.event_type)) = 'purchase' and not this_run.is_return then this_run.value
        end as _purchase_value,
        this_run.quantity,
        abs(this_run.quantity) as _abs_quantity,
        this_run.unit_price_cents,
        this_run.user_id in (select user_id from known_users) as _user_is_known,
        this_run.item_id in (select item_id from known_items) as _item_is_known,
        coalesce(copies.is_duplicate, false) as _is_duplicate,
        -- NULL for anything but a return: the rule reads returns only
        case when this_run.is_return then this_run._row_key in (select _row_key from bought_before) end
            as _return_follows_purchase
    from this_run
    left join copies using (_row_key)
)

select * from final
